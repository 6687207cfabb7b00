"""czii-kit: find protein complexes in cryo-ET tomograms (Kaggle CZII CryoET Object Identification)."""
__version__ = "0.1.0"
