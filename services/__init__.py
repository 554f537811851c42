"""Detection services: objectdetection (aggregator), facedetection, yolodetection."""
