"""Face detection with OpenCV's Haar frontal-face cascade."""
