"""TFRecord files and tf.train.Example / SequenceExample messages, without TensorFlow.

One import for the pieces, each in its own module:

- tfrecord_crc: CRC-32C and its masked form;
- tfrecord_compression: uncompressed / gzip / zlib detected from the content, streamed;
- tfrecord_framing: records of a file (`iter_records`, CRCs verified) and writing them;
- tfrecord_example: Example / SequenceExample encoding and parsing;
- youtube8m_records: YouTube-8M frame-level and video-level records, dequantisation.
"""

from __future__ import annotations

from datamodules.tfrecord_compression import GZIP, ZLIB, detect_compression
from datamodules.tfrecord_crc import crc32c, crc32c_python, masked_crc
from datamodules.tfrecord_example import (
    Example,
    Feature,
    SequenceExample,
    encode_example,
    encode_sequence_example,
    parse_example,
    parse_sequence_example,
)
from datamodules.tfrecord_framing import frame_record, iter_records, record_place, write_records
from datamodules.youtube8m_records import (
    AUDIO_DIM,
    DEQUANTIZE,
    RGB_DIM,
    FrameRecord,
    VideoRecord,
    dequantize,
    read_frame_level,
    read_video_level,
)

__all__ = [
    "AUDIO_DIM", "DEQUANTIZE", "GZIP", "RGB_DIM", "ZLIB", "Example", "Feature", "FrameRecord",
    "SequenceExample", "VideoRecord", "crc32c", "crc32c_python", "dequantize",
    "detect_compression", "encode_example", "encode_sequence_example", "frame_record",
    "iter_records", "masked_crc", "parse_example", "parse_sequence_example", "read_frame_level",
    "read_video_level", "record_place", "write_records",
]
