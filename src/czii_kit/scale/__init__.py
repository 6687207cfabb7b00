"""Past one machine on engines people already run: Ray across folds, study trials and tomograms (optional extra
``pip install -e ".[ray]"``). Nothing here is imported unless a tool is given ``--ray``; without it every job runs
as before. One model on several GPUs is torch.distributed under torchrun (``czii_kit.train.distributed``).

``session``: start or join Ray; ``tasks``: trials as Ray tasks (folds, studies); ``predict``: runs sharded over
Ray actors that write resumable part files (``czii_kit.infer.parts``). docs/scale.md says how to run a cluster.
"""
