"""2D YOLO branch on z-slices: dataset writing, offline training, slice inference and 3D clustering.

ultralytics is imported lazily (through ``czii_kit.yolo.offline``), so importing this package is cheap
and never touches the network or the home directory.
"""
