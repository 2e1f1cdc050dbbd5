"""tfds builder package for ODIR-5K (dataset name ``odir5k``)."""
