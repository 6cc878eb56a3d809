"""DICOM reading (read.py), the one preprocessing function (normalize.py) and synthetic files."""

DEFAULT_SIZE = 512  # side of the preprocessed image: `ingest --size`, and predict's size when unknown
