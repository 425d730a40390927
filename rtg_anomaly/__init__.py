"""rtg-anomaly: learn what clean X-ray scans look like and paint a heatmap over what departs from it."""

__version__ = "0.1.0"

from .config import DetectorConfig  # noqa: E402
from .pipeline.detector import AnomalyResult, Detector, NotFittedError  # noqa: E402

__all__ = ["AnomalyResult", "Detector", "DetectorConfig", "NotFittedError", "__version__"]
