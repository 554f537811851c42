"""The YOLO model tool chain: fetch the Darknet files, parse them, convert to ONNX, quantize to INT8.

Used at build time (``make models``, the images) and by the engines to find converted files; imports
nothing from the serving side of ``services.yolodetection``.
"""
