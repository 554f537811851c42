"""Object detection with Darknet YOLO models through OpenCV DNN."""
