"""A loader's errors: about the data (look for the bad sample, name it), or not (report DALI's
reason at once). Messages as DALI words them, and real DALI errors raised on the CPU."""

import pytest
import torch
from conftest import GOOD, drain, make_shard

from pipeline import check
from pipeline.config import DataConfig
from pipeline.dali import DaliLoader
from pipeline.loader import build_loader
from pipeline.shards import PipelineError, ShardError, load_split

CPU = torch.device("cpu")
# DALI 2.4's wrapping of an operator's error: the operator, the graph's Python traceback, what it
# encountered, the C++ context (the real messages, with the paths shortened).
WRAPPED = ("Critical error {when}:\nError in CPU operator `nvidia.dali.fn.{op}`,\nwhich was used in the pipeline "
           "definition with the following traceback:\n\n"
           "  File \"/work/main/pipeline/dali_graph.py\", line 155, in pipe\n"
           "    images = stage(images)\n\nencountered:\n\n{what}\nC++ context: [/opt/dali/dali/x.cc:50] \n"
           "Current pipeline object is no longer valid.")


def wrapped(when: str, op: str, what: str) -> str:
    return WRAPPED.format(when=when, op=op, what=what)


@pytest.mark.parametrize(("message", "about_data"), [
    ("nvImageCodec failed to decode the image", True),
    ("Malformed index file: offset is outside of the archive file", True),
    ("Error reading from a tar: unexpected end of data", True),
    ("thread pool failed to start", False),  # "tar" inside a word, "file" inside "profile": not data
    ("target device mismatch", False),
    ("profile failed", False),
    ("CUDA error: out of memory while decoding", False),  # a device fault even when it names decoding
    # at build, of the environment, of the device (issue 15); storage out of reach or missing (issue 18)
    ("Error when constructing operator: decoders__ImageRandomCrop encountered:\nnvJPEG failed to create handle",
     False),
    ("Error when executing Mixed operator decoders__ImageRandomCrop encountered:\n"
     "libnvjpeg.so.13: cannot open shared object file: No such file or directory", False),
    ("CUDA_ERROR_ILLEGAL_ADDRESS in ImageDecoder", False),
    ("Error reading s3://bucket/imagenet-train-000001.tar: curlCode: 7, Could not connect to server", False),
    ("S3 Object not found: s3://bucket/imagenet-train-000001.tar", False),
    # DALI 2.4's own words: a bad sample read or decoded, an index line parsed at build, a bad argument at build
    (wrapped("in pipeline", "decoders.image_random_crop", "nvImageCodec failure: '#3'"), True),
    (wrapped("in pipeline", "readers.webdataset", 'Assert on "component.offset < size" failed: Malformed '
             'index file at "/d/x-train-000000.idx" line 4 - offset is outside of the archive file'), True),
    (wrapped("when building pipeline", "readers.webdataset",
             'Underful sample detected at index file at "/d/x-train-000000.idx" line 4'), True),
    (wrapped("when building pipeline", "decoders.image_random_crop",
             'Assert on "area[0] <= area[1]" failed: Provided empty range'), False),
])
def test_dali_errors_about_the_data_are_told_from_the_rest(message, about_data):
    assert check.is_data_error(RuntimeError(message)) is about_data


def test_any_error_at_build_but_the_readers_is_not_about_the_data():
    """The loader knows when it was building: then a decoder's words do not make a data error."""
    assert not check.is_data_error(RuntimeError("nvImageCodec failed to decode the image"), building=True)
    assert check.is_data_error(RuntimeError(wrapped("in pipeline", "readers.webdataset", "Invalid seek")),
                               building=True)


@pytest.mark.parametrize(("message", "reason"), [
    (wrapped("when building pipeline", "decoders.image_random_crop",
             'Assert on "area[0] <= area[1]" failed: Provided empty range'),
     "decoders.image_random_crop: Provided empty range"),
    ("Error when executing CPU operator decoders__Image encountered:\nError in thread 0: [/opt/dali/dali/a.cc:9] "
     "nvImageCodec failed to decode\nStacktrace (2 entries):\n[frame 0]: libdali.so", "decoders__Image: "
     "nvImageCodec failed to decode"),
    ("CUDA_ERROR_ILLEGAL_ADDRESS in ImageDecoder", "CUDA_ERROR_ILLEGAL_ADDRESS in ImageDecoder"),
])
def test_dali_reason_is_the_operator_and_what_it_encountered(message, reason):
    assert check.dali_reason(RuntimeError(message)) == reason


def small(out, **kw) -> DataConfig:
    return DataConfig(path=str(out), batch_size=4, image_size=32, num_threads=1, shuffle_buffer=4, **kw)


def no_search(*args, **kwargs):
    raise AssertionError("searched the shards for an error that is not about the data")


def test_bad_argument_at_build_is_reported_at_once(tmp_path, monkeypatch):
    """A real DALI build error of the training graph (random_area [1.5, 1]: an empty range, which
    validate() would refuse, so the loader is made directly): PipelineError with DALI's reason, no search."""
    out = make_shard(tmp_path / "d", GOOD)
    monkeypatch.setattr(check, "first_problem", no_search)
    loader = DaliLoader(small(out, min_area=1.5), load_split(out, "train"), 0, 1, CPU, True, 2)
    with pytest.raises(PipelineError, match=r"^DALI failed: decoders.image_random_crop: Provided empty range$"):
        drain(loader)


def test_malformed_index_line_at_build_names_the_index(tmp_path):
    """DALI parses the indexes at build: a bad line there is about the data, and the search names it."""
    out = make_shard(tmp_path / "d", GOOD)
    idx = out / "x-train-000000.idx"
    lines = idx.read_text().splitlines()
    fields = lines[4].split()  # the 4th sample: ext offset size name per member
    lines[4] = " ".join([*fields[:2], "many", *fields[3:]])
    idx.write_text("\n".join(lines) + "\n")
    loader = build_loader(small(out), "train", 0, 1, CPU)  # the pre-flight reads the first and last lines only
    with pytest.raises(ShardError, match=r"x-train-000000.idx:5: offset or size is not an integer"):
        drain(loader)


def test_shard_gone_after_the_preflight_is_reported_at_once(tmp_path, monkeypatch):
    """A shard that vanished (storage unmounted, file moved) is missing, not bad: DALI's reason,
    naming the file, without a search of the shards."""
    out = make_shard(tmp_path / "d", GOOD)
    loader = build_loader(small(out), "train", 0, 1, CPU)
    (out / "x-train-000000.tar").unlink()
    monkeypatch.setattr(check, "first_problem", no_search)
    with pytest.raises(PipelineError, match=r"^DALI failed: readers.webdataset: File mapping failed: .*-000000.tar$"):
        drain(loader)
