"""Benchmarks behind ``czii bench``: each prints numbers (speed, memory, accuracy per setting), none asserts a
target; the README and docs quote what they printed, with the command.

* ``infer``: forward throughput, the single-pass limit, the per-tomogram path and its stages (``peer``: MONAI);
* ``train``: patches/s and the data pipeline's share of a training step;
* ``windows``: F4 and seconds per tomogram over sliding-window sizes and overlaps;
* ``synth``: seconds per simulated run and per built-in dataset.
"""
