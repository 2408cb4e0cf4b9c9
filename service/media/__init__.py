"""Media I/O with PyAV: probing, streaming decode, encode with audio passthrough, backgrounds."""
