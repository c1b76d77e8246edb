"""Video input pipelines: video folders, TFRecord frame shards, synthetic motion data.

Main entry points:

- :func:`video_dataset_from_directory`: clips and labels from class folders of video files
  (PyAV decoding by default; tensorflow-io where its probe passes).
- :func:`write_video_tfrecords` / :func:`tfrecord_video_dataset`: the scale path, TFRecord
  ``SequenceExample`` shards of JPEG frames read with pure TensorFlow ops.
- :func:`write_synthetic_actions`: a generated data set of real video files whose classes are
  defined only by motion.
- :func:`ucf101_split`, :func:`hmdb51_split`, :func:`kinetics_csv`: official train/test splits,
  passed to ``video_dataset_from_directory(..., split_file=...)``.
- :func:`tfio_decoder_status`: whether tensorflow-io can decode video here, and if not, why.
"""

from keras_sideways.data.errors import BadVideoFilesError, TfioUnavailableError, VideoInputError
from keras_sideways.data.listing import VIDEO_EXTENSIONS, list_video_files
from keras_sideways.data.pyav_decoder import VideoInfo, decode_clip, probe_video
from keras_sideways.data.sampling import clip_indices, sample_clip_indices
from keras_sideways.data.splits import VideoSplit, hmdb51_split, kinetics_csv, ucf101_split
from keras_sideways.data.synthetic import (
    DEFAULT_ACTIONS,
    SYNTHETIC_ACTIONS,
    write_synthetic_actions,
)
from keras_sideways.data.tfio_decoder import TfioStatus, tfio_decoder_status
from keras_sideways.data.tfrecord import tfrecord_video_dataset, write_video_tfrecords
from keras_sideways.data.video_folder import video_dataset_from_directory

__all__ = [
    "BadVideoFilesError",
    "DEFAULT_ACTIONS",
    "SYNTHETIC_ACTIONS",
    "TfioStatus",
    "TfioUnavailableError",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoInputError",
    "VideoSplit",
    "clip_indices",
    "decode_clip",
    "hmdb51_split",
    "kinetics_csv",
    "list_video_files",
    "probe_video",
    "sample_clip_indices",
    "tfio_decoder_status",
    "tfrecord_video_dataset",
    "ucf101_split",
    "video_dataset_from_directory",
    "write_video_tfrecords",
    "write_synthetic_actions",
]
