"""The legacy file must stay byte-compatible with the original LIQUID EDGE detection.proto."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor

from protos import detection_pb2 as legacy
from protos import detection_v1_pb2 as v1

F = descriptor.FieldDescriptor
# message -> [(field, number, type)], as in the original detection.proto
ORIGINAL = {
    "VideoFrame": [("number", 1, F.TYPE_INT32), ("timestamp", 2, F.TYPE_INT64), ("img", 3, F.TYPE_BYTES)],
    "FaceDetectionRequest": [("frame", 1, F.TYPE_MESSAGE), ("max_results", 2, F.TYPE_INT32)],
    "YoloDetectionRequest": [("frame", 1, F.TYPE_MESSAGE), ("max_results", 2, F.TYPE_INT32)],
    "ObjectDetectionRequest": [("user_id", 1, F.TYPE_INT32), ("frame", 2, F.TYPE_MESSAGE),
                               ("wantface", 3, F.TYPE_INT32), ("wantyolo", 4, F.TYPE_INT32),
                               ("max_results", 5, F.TYPE_INT32)],
    "DetectedYolo": [("name", 1, F.TYPE_STRING), ("confidence", 2, F.TYPE_FLOAT), ("x", 3, F.TYPE_INT32),
                     ("y", 4, F.TYPE_INT32), ("w", 5, F.TYPE_INT32), ("h", 6, F.TYPE_INT32),
                     ("r", 7, F.TYPE_UINT32), ("g", 8, F.TYPE_UINT32), ("b", 9, F.TYPE_UINT32)],
    "DetectedFace": [("confidence", 1, F.TYPE_FLOAT), ("x", 2, F.TYPE_INT32), ("y", 3, F.TYPE_INT32),
                     ("w", 4, F.TYPE_INT32), ("h", 5, F.TYPE_INT32), ("r", 6, F.TYPE_UINT32),
                     ("g", 7, F.TYPE_UINT32), ("b", 8, F.TYPE_UINT32)],
    "DetectedObject": [("name", 1, F.TYPE_STRING), ("eng", 2, F.TYPE_ENUM), ("confidence", 3, F.TYPE_FLOAT),
                       ("x", 4, F.TYPE_INT32), ("y", 5, F.TYPE_INT32), ("w", 6, F.TYPE_INT32),
                       ("h", 7, F.TYPE_INT32), ("r", 8, F.TYPE_UINT32), ("g", 9, F.TYPE_UINT32),
                       ("b", 10, F.TYPE_UINT32)],
    "YoloDetectionResponse": [("number", 1, F.TYPE_INT32), ("timestamp", 2, F.TYPE_INT64),
                              ("yolos", 3, F.TYPE_MESSAGE)],
    "FaceDetectionResponse": [("number", 1, F.TYPE_INT32), ("timestamp", 2, F.TYPE_INT64),
                              ("faces", 3, F.TYPE_MESSAGE)],
    "ObjectDetectionResponse": [("number", 1, F.TYPE_INT32), ("timestamp", 2, F.TYPE_INT64),
                                ("objects", 3, F.TYPE_MESSAGE), ("ipv4", 4, F.TYPE_FIXED32),
                                ("name", 5, F.TYPE_STRING)],
}


@pytest.mark.parametrize("message", sorted(ORIGINAL))
def test_legacy_messages_match_the_original_field_for_field(message: str) -> None:
    desc = legacy.DESCRIPTOR.message_types_by_name[message]
    assert desc.full_name == message, "legacy messages have no package"
    actual = [(f.name, f.number, f.type) for f in desc.fields]
    assert actual == ORIGINAL[message]


def test_legacy_file_has_exactly_the_original_messages_and_enum() -> None:
    assert set(legacy.DESCRIPTOR.message_types_by_name) == set(ORIGINAL)
    eng = legacy.DetectedObject.DESCRIPTOR.enum_types_by_name["Eng"]
    assert [(v.name, v.number) for v in eng.values] == [("FACE", 0), ("YOLO", 1)]
    repeated = {(m, f.name) for m in ORIGINAL for f in legacy.DESCRIPTOR.message_types_by_name[m].fields
                if f.is_repeated}
    assert repeated == {("YoloDetectionResponse", "yolos"), ("FaceDetectionResponse", "faces"),
                        ("ObjectDetectionResponse", "objects")}


def test_legacy_services_have_the_original_paths() -> None:
    paths = {
        f"/{s.full_name}/{m.name}": (m.input_type.name, m.output_type.name)
        for s in legacy.DESCRIPTOR.services_by_name.values() for m in s.methods
    }
    assert paths == {
        "/ObjectDetection/ObjectDetect": ("ObjectDetectionRequest", "ObjectDetectionResponse"),
        "/FaceDetection/FaceDetect": ("FaceDetectionRequest", "FaceDetectionResponse"),
        "/YoloDetection/YoloDetect": ("YoloDetectionRequest", "YoloDetectionResponse"),
    }


def test_legacy_encoding_is_byte_for_byte_what_the_original_sends() -> None:
    frame = legacy.VideoFrame(number=1, timestamp=300, img=b"ab")
    # field 1 varint 1; field 2 varint 300 (0xac 0x02); field 3 length-delimited "ab"
    assert frame.SerializeToString() == bytes([0x08, 0x01, 0x10, 0xAC, 0x02, 0x1A, 0x02, 0x61, 0x62])
    reply = legacy.ObjectDetectionResponse(number=2, ipv4=0x7F000001, name="n")
    # ipv4 is fixed32: tag (4 << 3 | 5) = 0x25, then 4 little-endian bytes
    assert reply.SerializeToString() == bytes([0x08, 0x02, 0x25, 0x01, 0x00, 0x00, 0x7F, 0x2A, 0x01, 0x6E])


def test_v1_lives_in_a_versioned_package_with_all_three_services() -> None:
    assert v1.DESCRIPTOR.package == "robomesh.detection.v1"
    assert {s.full_name for s in v1.DESCRIPTOR.services_by_name.values()} == {
        "robomesh.detection.v1.ObjectDetection", "robomesh.detection.v1.FaceDetection",
        "robomesh.detection.v1.YoloDetection"}
    fields = {f.name for f in v1.DetectResponse.DESCRIPTOR.fields}
    assert {"frame_number", "capture_timestamp_us", "detections", "detector_status", "timings_ms",
            "served_by"} <= fields
    assert {f.name for f in v1.ServedBy.DESCRIPTOR.fields} >= {"hostname", "ipv4", "pod", "node", "zone", "site",
                                                                "version", "device"}
