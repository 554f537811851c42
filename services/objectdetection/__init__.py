"""objectdetection: the ingress aggregator that fans each frame out to the detectors."""
