"""Data: the SynthSing benchmark, media I/O, ingestion of video folders, clip datasets."""
