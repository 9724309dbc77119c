"""Weight converters from other libraries' detectors (``python -m training.models.convert.torchvision``)."""
