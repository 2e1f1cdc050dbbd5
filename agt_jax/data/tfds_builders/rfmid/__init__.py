"""tfds builder package for RFMiD (dataset name ``rfmid``)."""
