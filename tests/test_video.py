"""Video inputs (docs/video.md): decoding and sampling, rendering per backbone (Qwen2-VL's native
video path, frames as images elsewhere, a refusal where neither works), ``unime encode`` rows, the
server's video items, stage-2 rows with videos, and GradCache on batches mixing videos and images.

Clips are made here from the shipped Flickr8k photos: consecutive photos resized to one size are
the frames, and PyAV encodes them into an .mp4 with the lossless RGB H.264 encoder (libx264rgb at
qp 0), which decodes to exactly the same pixels, so a file and its frame list must embed alike.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import unime
from unime.cli import main
from unime.inputs import EmbedInput, to_input
from unime.io.video import VideoDecodeError, check_frames, decode_video, load_video, sample_indices

PHOTOS = Path(unime.__file__).parent / "assets" / "flickr8k" / "images"
SIZE = (64, 48)  # width, height of every frame
N = 8  # the default video_frames

pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(count: int, start: int = 0) -> list[Image.Image]:
    paths = sorted(PHOTOS.glob("*.jpg"))[start : start + count]
    return [Image.open(path).convert("RGB").resize(SIZE, Image.BICUBIC) for path in paths]


def write_clip(path: Path, frames: list[Image.Image], lossless: bool = True) -> Path:
    """An .mp4 of ``frames`` at 4 frames per second: lossless RGB H.264, or ordinary lossy H.264."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=4,
                                      options={"qp": "0"} if lossless else {"crf": "23"})
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    """Ten consecutive photos as the frames of a clip."""
    return _photos(10)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, frames) -> Path:
    """The frames as PNG files, a lossless .mp4 of them and a lossy one."""
    folder = tmp_path_factory.mktemp("clip")
    for index, frame in enumerate(frames):
        frame.save(folder / f"frame_{index:03d}.png")
    write_clip(folder / "clip.mp4", frames)
    write_clip(folder / "lossy.mp4", frames, lossless=False)
    return folder


def _frame_paths(clip_dir: Path) -> list[str]:
    return [str(path) for path in sorted(clip_dir.glob("frame_*.png"))]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def qwen(tiny_model_factory):
    return unime.load(str(tiny_model_factory("qwen2_vl")))


# --- sampling and decoding ---------------------------------------------------------------------------


def test_sampling_takes_the_documented_indices():
    # numpy.linspace(0, n - 1, N).round(): first and last frame included, halves to even.
    assert sample_indices(10, 8) == [0, 1, 3, 4, 5, 6, 8, 9]
    assert sample_indices(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(5, 1) == [0]
    assert sample_indices(100, 4) == [0, 33, 66, 99]
    with pytest.raises(ValueError, match="has 3 frames, fewer than the 8 asked"):
        sample_indices(3, 8)
    for bad in (0, 65, True, 2.0):
        with pytest.raises(ValueError, match="from 1 to 64"):
            check_frames(bad)


def test_a_file_decodes_to_the_sampled_frames_of_its_list(clip_dir, frames):
    decoded = decode_video(clip_dir / "clip.mp4", N)
    listed = load_video(_frame_paths(clip_dir), N)
    assert len(decoded) == len(listed) == N
    for got_file, got_list, index in zip(decoded, listed, [0, 1, 3, 4, 5, 6, 8, 9], strict=True):
        assert got_file.mode == "RGB" and _same(got_file, frames[index]) and _same(got_list, frames[index])
    assert all(_same(a, b) for a, b in zip(load_video(list(frames), N), listed, strict=True))  # PIL frames too


def test_bad_videos_are_refused_naming_the_file(tmp_path, clip_dir, frames):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match=f"row 3: video file not found: {missing}"):
        load_video(str(missing), N, "row 3")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=f"row 3: cannot read video {junk}: not a decodable video") as error:
        load_video(str(junk), N, "row 3")
    assert error.value.kind == "unreadable"
    short = write_clip(tmp_path / "short.mp4", frames[:4])
    with pytest.raises(VideoDecodeError, match=f"cannot read video {short}: has 4 frames, fewer than the 8 asked"):
        load_video(str(short), N, "row 3")
    with pytest.raises(VideoDecodeError, match="row 3: the video's frame list has 3 frames, fewer than the 8"):
        load_video(_frame_paths(clip_dir)[:3], N, "row 3")
    with pytest.raises(VideoDecodeError, match=f"video {clip_dir / 'clip.mp4'} is \\d+ bytes; the limit is 100"):
        decode_video(clip_dir / "clip.mp4", N, "row 3", max_bytes=100)
    with pytest.raises(VideoDecodeError, match="frames are 64x48 = 3072 pixels; the limit is 3000"):
        decode_video(clip_dir / "clip.mp4", N, "row 3", max_pixels=3000)
    paths = _frame_paths(clip_dir)
    paths[3] = str(tmp_path / "gone.png")  # index 3 is sampled
    with pytest.raises(FileNotFoundError, match="row 3: video\\[3\\]: image file not found: .*gone.png"):
        load_video(paths, N, "row 3")


def test_inputs_take_a_video_and_refuse_bad_forms():
    item = to_input({"video": ["a.png", "b.png"], "text": "a dog runs", "instruction": "Find the clip"})
    assert item.has_video and item.has_visual and not item.has_image
    with pytest.raises(ValueError, match="input 2: an input takes an image or a video, not both"):
        to_input({"video": "clip.mp4", "image": "a.png"}, where="input 2")
    with pytest.raises(ValueError, match="input 2: 'video' is an empty list of frames"):
        to_input({"video": []}, where="input 2")
    with pytest.raises(ValueError, match="input 2: 'video\\[1\\]' must be a PIL image or an image path, got int"):
        to_input({"video": ["a.png", 3]}, where="input 2")
    with pytest.raises(ValueError, match="'video' must be a video file's path or a list of frames"):
        EmbedInput(video=3)


# --- rendering: the native path, frames as images, refusal ------------------------------------------------


def test_qwen_renders_its_video_token_and_the_processor_gets_the_frames_as_one_video(qwen, frames):
    module = qwen[0]
    prompt, images, videos = module.render_media(to_input({"video": list(frames)}))
    assert prompt.count("<|vision_start|><|video_pad|><|vision_end|>") == 1 and "<|image_pad|>" not in prompt
    assert images == [] and len(videos) == 1 and len(videos[0]) == N
    assert all(_same(got, frames[i]) for got, i in zip(videos[0], sample_indices(10, N), strict=True))
    with pytest.raises(ValueError, match="use render_media"):
        module.render(to_input({"video": list(frames)}))

    seen = []
    processor = module.processor
    original = type(processor).__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    type(processor).__call__ = spy
    try:
        features = qwen.preprocess([{"video": list(frames)}, {"image": frames[0]}, "a text"])
    finally:
        type(processor).__call__ = original
    assert len(seen) == 1 and len(seen[0]["videos"]) == 1 and seen[0]["do_sample_frames"] is False
    grid = features["video_grid_thw"]
    # 8 frames -> 4 temporal patches of 2; a 64x48 frame -> smart_resize 56x56 -> 4x4 patches of 14.
    assert grid.tolist() == [[4, 4, 4]]
    assert features["pixel_values_videos"].shape == (4 * 4 * 4, 3 * 2 * 14 * 14)
    video_pad = module.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert (features["input_ids"][0] == video_pad).sum() == 4 * 4 * 4 // 4  # merged 2x2
    assert (features["input_ids"][1:] == video_pad).sum() == 0
    assert features["num_videos_per_sample"].tolist() == [1, 0, 0]
    assert features["num_images_per_sample"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_the_frames_video_processor_lays_out_patches_as_the_image_processor(family, tiny_model_factory, frames):
    """A two-frame video of one image is that image's patches (the image processor repeats an
    image over the temporal patch): the same resize, normalisation and patch order."""
    processor = unime.load(str(tiny_model_factory(family)))[0].processor
    image = processor.image_processor(images=[frames[2]], return_tensors="pt")
    video = processor.video_processor([[frames[2], frames[2]]], return_tensors="pt")
    assert torch.equal(video["video_grid_thw"], image["image_grid_thw"])
    torch.testing.assert_close(video["pixel_values_videos"], image["pixel_values"], rtol=0, atol=1e-5)
    # An odd frame count is padded with the last frame, as transformers' Qwen2VLVideoProcessor does.
    odd = processor.video_processor([frames[:3]], return_tensors="pt")
    assert odd["video_grid_thw"].tolist()[0][0] == 2


def test_qwen_video_embeddings_are_deterministic_and_equal_for_a_list_and_its_file(qwen, clip_dir, frames):
    clip = str(clip_dir / "clip.mp4")
    first = qwen.encode([{"video": _frame_paths(clip_dir)}, {"video": clip}, {"video": list(frames)},
                         {"image": frames[0]}, {"video": list(frames)[::-1]}])
    again = qwen.encode([{"video": clip}])
    np.testing.assert_array_equal(first[1], again[0])
    np.testing.assert_allclose(first[0], first[1], atol=1e-6)  # PNG paths vs lossless .mp4
    np.testing.assert_allclose(first[0], first[2], atol=1e-6)  # PIL frames
    assert float(first[0] @ first[3]) < 0.999  # not the first frame alone
    assert float(first[0] @ first[4]) < 0.999  # frame order matters on the native path
    # A lossy H.264 encode of the same frames: the same grid and tokens, the pixels differ a little.
    lossy = qwen.preprocess([{"video": str(clip_dir / "lossy.mp4")}])
    exact = qwen.preprocess([{"video": clip}])
    assert torch.equal(lossy["input_ids"], exact["input_ids"])
    assert torch.equal(lossy["video_grid_thw"], exact["video_grid_thw"])
    assert not torch.equal(lossy["pixel_values_videos"], exact["pixel_values_videos"])


def test_video_frames_is_saved_and_changes_the_sampling(tiny_model_copy, frames, tmp_path):
    model = unime.load(str(tiny_model_copy("qwen2_vl")))
    assert model.unime_config.video_frames == N
    model.update_config(video_frames=4)
    features = model.preprocess([{"video": list(frames)}])
    assert features["video_grid_thw"].tolist() == [[2, 4, 4]]
    model.save(str(tmp_path / "saved"))
    reloaded = unime.load(str(tmp_path / "saved"))
    assert reloaded.unime_config.video_frames == 4
    np.testing.assert_allclose(reloaded.encode([{"video": list(frames)}]), model.encode([{"video": list(frames)}]),
                               atol=1e-6)
    with pytest.raises(ValueError, match="from 1 to 64"):
        model.update_config(video_frames=0)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "fast_vlm"])
def test_families_without_a_video_path_take_the_frames_as_images(family, tiny_model_factory, clip_dir, frames):
    model = unime.load(str(tiny_model_factory(family)))
    token = model.backbone.image_token
    prompt, images, videos = model[0].render_media(to_input({"video": list(frames)}))
    assert model.backbone.video_rendering == "frames"
    assert prompt.count(token) == N and videos == [] and len(images) == N
    assert all(_same(got, frames[i]) for got, i in zip(images, sample_indices(10, N), strict=True))
    features = model.preprocess([{"video": list(frames)}, {"image": frames[0]}, "a text"])
    assert features["num_images_per_sample"].tolist() == [N, 1, 0]
    assert "pixel_values_videos" not in features
    got = model.encode([{"video": list(frames)}, {"video": str(clip_dir / "clip.mp4")}, {"image": frames[0]},
                        {"video": [frames[0]] * N}])
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    np.testing.assert_allclose(got[0], model.encode([{"video": list(frames)}])[0], atol=1e-6)  # alone, unpadded
    assert float(got[0] @ got[2]) < 0.999
    assert float(got[3] @ got[2]) < 0.999  # eight copies of a photo are not the photo


def test_text_and_video_in_sum_and_joint_mode(qwen, frames):
    item = {"video": list(frames), "text": "people on a street", "instruction": "Find a matching video"}
    assert qwen.unime_config.mode == "sum"
    # Sum mode: the video and the text (with its instruction) embedded apart, then the normalised sum.
    summed = qwen.encode([item])[0]
    video, text = qwen.encode([{"video": list(frames)},
                               {"text": "people on a street", "instruction": "Find a matching video"}])
    np.testing.assert_allclose(summed, (video + text) / np.linalg.norm(video + text), atol=1e-6)
    qwen.set_mode("joint")
    try:
        prompt, _, videos = qwen[0].render_media(to_input(item))
        joint = qwen.encode([item])[0]
    finally:
        qwen.set_mode("sum")
    assert prompt.index("<|video_pad|>") < prompt.index("Find a matching video") < prompt.index("people on a street")
    assert len(videos) == 1 and not np.allclose(joint, summed, atol=1e-3)


def test_a_family_that_cannot_take_videos_is_refused_by_name(tiny_model_factory, frames):
    from unime.backbones import get_backbone

    phi = get_backbone("phi3_v")
    assert phi.video_rendering == "refused"
    with pytest.raises(ValueError, match="the phi3_v backbone takes no video inputs"):
        phi.video_placeholder(N)
    model = unime.load(str(tiny_model_factory("llava")))
    model[0].backbone = dataclasses.replace(model.backbone, frames_as_images=False)
    with pytest.raises(ValueError, match="input 1: the llava backbone takes no video inputs"):
        model.encode(["a text", {"video": list(frames)}])


# --- unime encode ---------------------------------------------------------------------------------------


def test_encode_cli_embeds_video_rows_with_paths_relative_to_the_file(qwen, tiny_model_factory, clip_dir,
                                                                       tmp_path, frames):
    rows = tmp_path / "rows.jsonl"
    relative = [str(Path("..") / clip_dir.name / Path(p).name) for p in _frame_paths(clip_dir)]
    data = [{"video": relative}, {"video": f"../{clip_dir.name}/clip.mp4", "text": "a street"},
            {"text": "just text"}]
    # tmp_path and clip_dir are siblings under pytest's base folder
    assert (tmp_path / relative[0]).resolve() == Path(_frame_paths(clip_dir)[0]).resolve()
    rows.write_text("\n".join(json.dumps(row) for row in data) + "\n")
    out = tmp_path / "emb.npy"
    assert main(["encode", "--model", str(tiny_model_factory("qwen2_vl")), "--input", str(rows), "--output",
                 str(out), "--dtype", "float32", "--no-progress", "--video-frames", "4"]) == 0
    got = np.load(out)
    qwen.update_config(video_frames=4)
    try:
        expected = qwen.encode([{"video": _frame_paths(clip_dir)},
                                {"video": str(clip_dir / "clip.mp4"), "text": "a street"}, "just text"])
    finally:
        qwen.update_config(video_frames=N)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"video": "missing.mp4"}, "rows.jsonl line 2: video file not found: .*missing.mp4"),
        ({"video": ["f0.png", "nope.png"]}, "rows.jsonl line 2: video\\[1\\]: frame image file not found: .*nope.png"),
        ({"video": "junk.mp4"}, "cannot read video .*junk.mp4: not a decodable video"),
        ({"video": ["f0.png", "f0.png", "f0.png"]},
         "rows.jsonl line 2: the video's frame list has 3 frames, fewer than the 8 sampled"),
        ({"video": "short.mp4"}, "cannot read video .*short.mp4: has 4 frames, fewer than the 8 asked"),
        ({"video": "huge.mp4"}, "video .*huge.mp4 is 600000000 bytes; the limit is 536870912"),
        ({"video": 5}, "rows.jsonl line 2: 'video' must be a video file's path or a list of frames"),
    ],
)
def test_encode_cli_refuses_bad_videos_naming_the_file(row, message, tiny_model_factory, tmp_path, capsys, frames):
    frames[0].save(tmp_path / "f0.png")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    write_clip(tmp_path / "short.mp4", frames[:4])
    with open(tmp_path / "huge.mp4", "wb") as handle:  # sparse: takes no disk space
        handle.truncate(600_000_000)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(row) + "\n")
    code = main(["encode", "--model", str(tiny_model_factory("qwen2_vl")), "--input", str(rows), "--output",
                 str(tmp_path / "e.npy"), "--no-progress"])
    assert code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "e.npy").exists()


def test_encode_cli_checks_video_frames(tiny_model_factory, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "x"}\n')
    assert main(["encode", "--model", str(tiny_model_factory("qwen2_vl")), "--input", str(rows), "--output",
                 str(tmp_path / "e.npy"), "--video-frames", "0"]) == 2
    assert "--video-frames: video frames must be an integer from 1 to 64" in capsys.readouterr().err


# --- the server -------------------------------------------------------------------------------------------


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_server_video_items_equal_encode_and_refusals_name_the_field(qwen, frames):
    from unime.serve import ServeSettings, create_app
    from unime.serve.background import BackgroundServer

    settings = ServeSettings(model_name="tiny", batch_wait_ms=5.0, max_video_frames=12, max_image_pixels=64 * 64)
    urls = [_data_url(frame) for frame in frames]
    with BackgroundServer(create_app(qwen, settings)) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        response = c.post("/v1/embeddings", json={"input": [
            "a text", {"video": urls}, {"video": urls, "text": "a street", "instruction": "Find it"}]})
        assert response.status_code == 200, response.text
        got = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
        expected = qwen.encode(["a text", {"video": list(frames)},
                                {"video": list(frames), "text": "a street", "instruction": "Find it"}])
        np.testing.assert_allclose(got, expected, atol=1e-5)

        def refused(item, status, param, text):
            reply = c.post("/v1/embeddings", json={"input": ["ok", "ok", item]})
            assert reply.status_code == status, reply.text
            error = reply.json()["error"]
            assert error["param"] == param and text in error["message"], error

        refused({"video": urls + urls}, 413, "input[2].video", "has 20 frames; the limit is max_video_frames=12")
        refused({"video": urls[:3]}, 400, "input[2].video", "has 3 frames, fewer than the 8 the model samples")
        refused({"video": urls[:3] + ["data:image/png;base64,bm90IGFuIGltYWdl"] + urls[4:]}, 400,
                "input[2].video[3]", "input[2].video[3]")
        big = _data_url(Image.new("RGB", (80, 80)))
        refused({"video": [big] + urls[1:]}, 413, "input[2].video[0]", "max_image_pixels")
        refused({"video": urls, "image": urls[0]}, 400, "input[2]", "an 'image' and a 'video'")
        refused({"video": "clip.mp4"}, 400, "input[2].video", "must be a list of frame images")
        refused({"video": [urls[0], 7]}, 400, "input[2].video[1]", "must be a non-empty image string")


# --- training ---------------------------------------------------------------------------------------------


def test_stage2_rows_take_videos_beside_images_and_name_bad_rows(tmp_path, clip_dir, frames):
    from unime.training.mmeb_data import MMEBTrainCollator, load_mmeb_train

    root = tmp_path / "media"
    (root / "frames").mkdir(parents=True)
    for index, frame in enumerate(frames):
        frame.save(root / "frames" / f"{index:04d}.jpg", quality=95)
    write_clip(root / "clip.mp4", frames)
    frames[0].save(root / "photo.png")
    rows = [
        {"qry": "Find a video of: a street", "pos_text": "", "pos_video_path": "frames"},
        {"qry": "<|image_1|>\nRepresent the given image.", "qry_image_path": "photo.png", "pos_text": "a photo"},
        {"qry": "Represent the given video.", "qry_video_path": "clip.mp4", "pos_text": "a clip"},
    ]
    data_file = tmp_path / "mixed.jsonl"
    data_file.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    data = load_mmeb_train(data_file, root)
    dataset = data.datasets["mixed"]
    assert dataset[0]["positive"] == {"text": "", "image": "", "video": str(root / "frames")}
    assert dataset[1]["query"]["video"] == "" and dataset[2]["query"]["video"] == str(root / "clip.mp4")
    collator = MMEBTrainCollator(preprocess_fn=lambda x: x, video_frames=N)
    inputs = [collator.inputs(dataset[i], N) for i in range(3)]
    assert len(inputs[0]["positive"].video) == N and len(inputs[2]["query"].video) == N
    assert all(isinstance(frame, Image.Image) for frame in inputs[2]["query"].video)
    assert inputs[1]["query"].has_image and not inputs[1]["query"].has_video

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"qry": "q", "qry_video_path": "nowhere.mp4", "pos_text": "p"}) + "\n")
    with pytest.raises(ValueError, match="dataset bad, bad.jsonl line 1: video file not found: .*nowhere.mp4"):
        load_mmeb_train(bad, root)
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"qry": "q", "qry_video_path": "clip.mp4", "qry_image_path": "photo.png",
                                "pos_text": "p"}) + "\n")
    with pytest.raises(ValueError, match="both.jsonl line 1: the query has an image .* and a video"):
        load_mmeb_train(both, root)
    write_clip(root / "short.mp4", frames[:3])
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"qry": "q", "qry_video_path": "short.mp4", "pos_text": "p"}) + "\n")
    row = load_mmeb_train(short, root).datasets["short"][0]
    with pytest.raises(ValueError, match="dataset short, short.jsonl line 1, query: cannot read video .*short.mp4: "
                                         "has 3 frames"):
        collator([row])


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_cached_gradients_equal_uncached_on_batches_mixing_videos_and_images(family, tiny_model_factory, frames):
    """Stage 2's loss with GradCache (mini-batches of 2 rows) on columns mixing video, image and
    text rows: the engine slices Qwen2-VL's ``pixel_values_videos`` by ``video_grid_thw`` and
    ``num_videos_per_sample``, and frames-as-images by ``num_images_per_sample``."""
    from test_gradcache_equivalence import _assert_same_gradients, _loss, _model, _step

    model = _model(tiny_model_factory(family))
    model.update_config(video_frames=4)
    clip_a, clip_b = list(frames), _photos(6, start=20)
    photo_a, photo_b = _photos(2, start=40)
    queries = [
        EmbedInput(video=clip_a, instruction="Find a caption for the video"),
        EmbedInput(text="<|image_1|>\nRepresent the given image.", image=photo_a),
        EmbedInput(text="Find a video of people outside"),
        EmbedInput(video=clip_b, text="what happens?", instruction="Answer about the video"),
        EmbedInput(text="a dog in the grass"),
    ]
    positives = [
        EmbedInput(text="people on a street"),
        EmbedInput(text="a photo"),
        EmbedInput(video=clip_b),
        EmbedInput(text="they walk"),
        EmbedInput(image=photo_b),
    ]
    features = []
    for column in (queries, positives):
        feature = model.preprocess(column)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in feature:
                feature[key] = feature[key].to(torch.float64)
        features.append(feature)
    if family == "qwen2_vl":
        assert features[0]["num_videos_per_sample"].tolist() == [1, 0, 0, 1, 0]
        assert features[0]["video_grid_thw"].shape[0] == 2 and features[1]["num_videos_per_sample"].tolist() == [
            0, 0, 1, 0, 0]
    else:
        assert features[0]["num_images_per_sample"].tolist() == [4, 1, 0, 4, 0]
    loss_ref, mined_ref, grads_ref = _step(model, _loss(model, None), features)
    loss_cached, mined_cached, grads_cached = _step(model, _loss(model, 2), features)
    assert loss_cached == pytest.approx(loss_ref, rel=1e-8)
    assert torch.equal(mined_cached, mined_ref)
    _assert_same_gradients(grads_cached, grads_ref)
    if family == "qwen2_vl":  # the video tower gets gradient: the video rows were embedded
        assert any("visual" in name and "lora" in name for name in grads_ref)


def test_unime_tune_trains_on_rows_mixing_videos_and_images(tiny_model_factory, tmp_path, capsys, monkeypatch):
    """``unime tune`` with GradCache (mini-batches of 2) on one data set of video and image rows, so
    batches mix them; the video frames are resized to the recipe's image_size like its images."""
    import unime.cli as cli

    root, data = tmp_path / "media", tmp_path / "data"
    rows = []
    root.mkdir()
    for i in range(4):
        write_clip(root / f"clip{i}.mp4", _photos(8, start=10 * i))
        photo = _photos(1, start=10 * i + 7)[0]
        photo.save(root / f"photo{i}.png")
        rows.append({"qry": "Represent the given video.", "qry_video_path": f"clip{i}.mp4", "pos_text": f"scene {i}"})
        rows.append({"qry": "<|image_1|>\nRepresent the given image.", "qry_image_path": f"photo{i}.png",
                     "pos_text": f"photo {i}"})
    data.mkdir()
    (data / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    from unime.modeling import UniMETransformer

    seen = []
    original = UniMETransformer.preprocess

    def spy(self, inputs, *args, **kwargs):
        features = original(self, inputs, *args, **kwargs)
        seen.append((features.get("num_videos_per_sample"), features.get("num_images_per_sample"),
                     features.get("pixel_values_videos")))
        return features

    monkeypatch.setattr(UniMETransformer, "preprocess", spy)
    out = tmp_path / "tuned"
    assert cli.main(["tune", "--config", "tune-cpu", "--model", str(tiny_model_factory("qwen2_vl")),
                     "--data", str(data), "--image-root", str(root), "--output-dir", str(out), "--batch-size", "4",
                     "--mini-batch-size", "2", "--num-hard-negatives", "2", "--image-size", "28",
                     "--max-steps", "2", "--save-steps", "2", "--no-bf16"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    # The query columns held videos and images together, the videos on Qwen2-VL's video path with
    # 8 frames of 28 x 28 pixels (image_size): 4 temporal x 2 x 2 patches each.
    mixed = [(videos, pixels) for videos, images, pixels in seen
             if videos is not None and images is not None and videos.sum() > 0 and images.sum() > 0]
    assert mixed and all(pixels.shape[0] == 16 * int(videos.sum()) for videos, pixels in mixed)
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2] and all(entry["grad_norm"] > 0 for entry in steps)
    model = unime.load(str(out))
    assert model.unime_config.video_frames == N and model.unime_config.stages == ["tune"]
    embedded = model.encode([{"video": str(root / "clip0.mp4")}, "scene 0"])
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)


def test_serve_cli_checks_video_frames_before_loading_anything(tiny_model_factory, capsys):
    model = str(tiny_model_factory("qwen2_vl"))
    assert main(["serve", "--model", model, "--video-frames", "65"]) == 2
    assert "--video-frames: video frames must be an integer from 1 to 64" in capsys.readouterr().err
    assert main(["serve", "--model", model, "--max-video-frames", "0"]) == 2
    assert "max_video_frames must be a positive integer" in capsys.readouterr().err
