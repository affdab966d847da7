"""Media file names: which suffixes are videos and images, and the video id of a file name."""

from __future__ import annotations

import os

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")  # containers a decoder opens
NPY_SUFFIX = ".npy"  # M3-S's pre-decoded clips (videos_npy/<stem>.npy)
CLIP_SUFFIXES = VIDEO_SUFFIXES + (NPY_SUFFIX,)  # every file a clip is read from
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def video_id(name: str) -> str:
    """The id of a video or image file name: its name without a media suffix (``video10.webm`` -> ``video10``)."""
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in CLIP_SUFFIXES + IMAGE_SUFFIXES else name
