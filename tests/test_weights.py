"""Published weights: files fabricated from the manifests in tests/fixtures/weights (the
official zoo's zip and .pth, mmsegmentation's dict) convert losslessly and load strictly;
bad files give one clear error; downloads go through file:// and a local HTTP server."""

import dataclasses
import hashlib
import http.server
import io
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import local_server

from encnet_lite import engine, presets
from encnet_lite import weights as W
from encnet_lite.data.pcontext import CLASSES_59
from encnet_lite.errors import WeightsError
from encnet_lite.models import (
    ResNetBackbone,
    build_published,
    count_parameters,
    encnet_resnet50,
    encnet_resnet50s,
    encnet_resnet101,
    fcn_resnet50,
    load_weights,
)

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
MANIFESTS = {
    "EncNet_ResNet50s_PContext": "official_encnet_resnet50s_pcontext.json",
    "EncNet_ResNet101s_PContext": "official_encnet_resnet101s_pcontext.json",
    "EncNet_ResNet50s_ADE": "official_encnet_resnet50s_ade.json",
    "FCN_ResNet50s_ADE": "official_fcn_resnet50s_ade.json",
    "encnet_r50-d8_4xb4-80k_ade20k-512x512": "mmseg_encnet_r50-d8_ade20k.json",
}
PC50 = "EncNet_ResNet50s_PContext"


def manifest(name):
    return json.loads((FIXTURES / MANIFESTS[name]).read_text())


def fabricate(name, seed=0, fc=True, counters=True):
    """Random tensors with the manifest's keys and shapes (the official ones with the
    ImageNet classifier the zoo files probably carry)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest(name)["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            if counters:
                state[key] = torch.randint(1, 10_000, (), generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen)
    if fc and W.get_entry(name).source == "official":
        state["pretrained.fc.weight"] = torch.randn(1000, 2048, generator=gen)
        state["pretrained.fc.bias"] = torch.randn(1000, generator=gen)
    return state


def pth_bytes(obj, legacy=True):
    """``torch.save`` bytes; ``legacy``: the pre-1.6 format the 2018 zoo files have."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def write_file(path, name, state, fmt):
    """``fmt``: "zip" (the zoo's archive), "pth" (the .pth in it), "mmseg" (the dict)."""
    entry = W.get_entry(name)
    if fmt == "mmseg":
        data = pth_bytes({"state_dict": state, "meta": {"CLASSES": list(entry.classes)}})
    else:
        data = pth_bytes(state)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(entry.filename[:-4] + ".pth", data)
    else:
        path.write_bytes(data)
    return path, data


def with_digest(name, data):
    """The entry of ``name`` with the checksum of the fabricated ``.pth`` bytes ``data``."""
    entry = W.get_entry(name)
    digest = hashlib.new(entry.algo, data).hexdigest()
    return dataclasses.replace(entry, digest=digest if entry.algo == "sha1" else digest[:8])


@pytest.fixture(scope="module")
def pc50(tmp_path_factory):
    """EncNet_ResNet50s_PContext fabricated as the zoo's zip and as the bare .pth."""
    folder = tmp_path_factory.mktemp("pc50")
    state = fabricate(PC50)
    zip_path, data = write_file(folder / "pc50.zip", PC50, state, "zip")
    pth_path, _ = write_file(folder / "pc50.pth", PC50, state, "pth")
    return {"zip": zip_path, "pth": pth_path, "data": data, "state": state}


def renamed(name, state):
    """Our key for every published key (the known-unused fc keys left out)."""
    rules = W.RULES[W.get_entry(name).rules]
    return {W._rename(k, rules): k for k in state if not k.startswith("pretrained.fc.")}


def assert_carries_every_tensor(model, name, state):
    """Every tensor of the file (but pretrained.fc.*) is in the model under its new name,
    bit-identical, and the model has nothing else (but BN counters a file may lack)."""
    ours = model.state_dict()
    mapping = renamed(name, state)
    assert set(mapping) <= set(ours)
    rest = set(ours) - set(mapping)
    assert all(k.endswith("num_batches_tracked") for k in rest)
    assert not rest or not any(k.endswith("num_batches_tracked") for k in state)
    for new, old in mapping.items():
        assert ours[new].dtype == state[old].dtype and torch.equal(ours[new], state[old]), old


# ---------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("fmt", ["zip", "pth"])
def test_official_pcontext_file_loads_bit_identical(pc50, fmt):
    model = load_weights(PC50.lower(), file=pc50[fmt], verify=False)
    assert not model.training and model.weights_meta is W.get_entry(PC50)
    assert_carries_every_tensor(model, PC50, pc50["state"])
    assert model.weights_meta.classes == CLASSES_59 and model.align_corners is True
    assert model.head.lateral is not None and model.aux is not None


@pytest.fixture(scope="module")
def mmseg_file(tmp_path_factory):
    """mmsegmentation's EncNet R-50-D8 ADE20K (80k) fabricated as its {state_dict, meta}."""
    name = "encnet_r50-d8_4xb4-80k_ade20k-512x512"
    state = fabricate(name, seed=4)
    path, _ = write_file(tmp_path_factory.mktemp("mmseg") / "m.pth", name, state, "mmseg")
    return name, path, state


@pytest.mark.parametrize("name,fmt", [("EncNet_ResNet50s_ADE", "zip"),
                                      ("FCN_ResNet50s_ADE", "pth"),
                                      ("encnet_r50-d8_4xb4-80k_ade20k-512x512", "mmseg")])
def test_other_manifests_load_bit_identical(tmp_path, mmseg_file, name, fmt):
    if fmt == "mmseg":
        _, path, state = mmseg_file
    else:
        state = fabricate(name, seed=1)
        path, _ = write_file(tmp_path / f"f.{fmt}", name, state, fmt)
    model = load_weights(name.upper(), file=path, verify=False)
    assert not model.training and model.weights_meta.num_classes == 150
    assert_carries_every_tensor(model, name, state)
    assert model.weights_meta.classes[:3] == ("wall", "building", "sky")


@pytest.mark.slow
def test_resnet101_pcontext_loads_bit_identical(tmp_path):
    name = "EncNet_ResNet101s_PContext"
    state = fabricate(name, seed=2, fc=False, counters=False)  # also: no fc, no counters
    path, _ = write_file(tmp_path / "r101.pth", name, state, "pth")
    model = load_weights(name, file=path, verify=False)
    assert_carries_every_tensor(model, name, state)
    assert len(model.backbone.layer3) == 23
    counters = [v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 0 for c in counters)


def test_every_manifest_fits_its_entry_and_export_inverts_the_renaming():
    for name in MANIFESTS:
        entry = W.get_entry(name)
        model = build_published(entry, device="meta")
        exported = W.export_state_dict(model, entry)
        facts = manifest(name)
        assert {k: list(v.shape) for k, v in exported.items()} == facts["state_dict"]
        if entry.source == "official":  # the settings the official code was built with
            assert (entry.num_classes, entry.lateral, entry.se_loss, entry.base_size) == (
                facts["nclass"], bool(facts["lateral"]), facts["se_loss"], facts["base_size"])
            assert entry.crop_size == (facts["crop_size"],) * 2
            assert entry.align_corners == facts["up_kwargs"]["align_corners"]
            assert count_parameters(model) == facts["num_params"]


# ---------------------------------------------------------------------------- semantics


def test_what_matters_lands_where_it_belongs(pc50):
    model = load_weights(PC50, file=pc50["zip"], verify=False)
    s = pc50["state"]
    enc = model.head.encode
    assert torch.equal(enc.encoding.codewords, s["head.encmodule.encoding.3.codewords"])
    assert torch.equal(enc.encoding.scale, s["head.encmodule.encoding.3.scale"])  # no sign flip
    assert torch.equal(enc.code_norm.running_var, s["head.encmodule.encoding.4.running_var"])
    assert torch.equal(enc.project[1].running_mean, s["head.encmodule.encoding.1.running_mean"])
    assert torch.equal(model.backbone.bn1.running_mean, s["pretrained.bn1.running_mean"])
    assert int(model.backbone.bn1.num_batches_tracked) == int(
        s["pretrained.bn1.num_batches_tracked"])
    stem = model.backbone.conv1  # the three 3x3 convs, in order; only the first strides
    for index, (c_in, c_out, stride) in zip((0, 3, 6), ((3, 64, 2), (64, 64, 1), (64, 128, 1))):
        assert torch.equal(stem[index].weight, s[f"pretrained.conv1.{index}.weight"])
        assert (stem[index].in_channels, stem[index].out_channels) == (c_in, c_out)
        assert stem[index].stride == (stride, stride)
    assert model.backbone.layer1[0].conv1.in_channels == 128
    assert torch.equal(model.head.lateral.connect[1][0].weight, s["head.connect.1.0.weight"])
    assert torch.equal(enc.fc_se.weight, s["head.encmodule.selayer.weight"])
    assert torch.equal(model.aux[2].weight, s["auxlayer.conv5.4.weight"])


def test_classifier_rows_keep_the_class_order(tmp_path):
    """A file whose classifier answers 'person' everywhere makes the model say 'person'."""
    state = fabricate(PC50, seed=3, fc=False)
    for key, value in state.items():  # keep the random network's activations finite
        if key.endswith("running_var"):
            value.abs_().add_(1.0)
        elif value.dim() == 4:
            value.div_(value[0].numel() ** 0.5)
    person = CLASSES_59.index("person")
    state["head.conv6.1.weight"].zero_()
    state["head.conv6.1.bias"].zero_()
    state["head.conv6.1.bias"][person] = 50.0
    path, _ = write_file(tmp_path / "p.pth", PC50, state, "pth")
    model = load_weights(PC50, file=path, verify=False)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 40, 36))["main"]
    assert bool(torch.isfinite(logits).all()) and bool((logits.argmax(1) == person).all())
    assert model.weights_meta.classes[person] == "person"


def test_mmseg_stem_and_heads_map_one_to_one(mmseg_file):
    name, path, state = mmseg_file
    model = load_weights(name, file=path, verify=False)
    stem = model.backbone.conv1
    assert [stem[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    assert torch.equal(stem[6].weight, state["backbone.stem.6.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["backbone.stem.7.running_var"])
    assert torch.equal(model.head.encode.encoding.codewords,
                       state["decode_head.enc_module.encoding.0.codewords"])
    assert torch.equal(model.head.classifier[1].bias, state["decode_head.conv_seg.bias"])
    assert model.weights_meta.align_corners is False and model.head.lateral is None


# ---------------------------------------------------------------------------- errors


def fit(name, state):
    """Conversion + fit check against the entry's model, built without memory."""
    entry = W.get_entry(name)
    model = build_published(entry, device="meta")
    return W.fit_state_dict(state, entry, model.state_dict(), "F.pth")


def meta_state(name):
    return {k: torch.empty(v, device="meta") for k, v in manifest(name)["state_dict"].items()}


def test_missing_extra_and_misshapen_keys_are_named():
    state = meta_state(PC50)
    del state["head.encmodule.selayer.weight"]
    state["head.mystery.weight"] = torch.empty(3, device="meta")
    state["head.conv6.1.weight"] = torch.empty(60, 512, 1, 1, device="meta")
    with pytest.raises(WeightsError) as info:
        fit(PC50, state)
    message = str(info.value)
    assert "F.pth does not fit EncNet_ResNet50s_PContext" in message
    assert "1 missing keys (head.encmodule.selayer.weight)" in message
    assert "1 unexpected keys (head.mystery.weight)" in message
    assert "head.conv6.1.weight (60, 512, 1, 1) (model (59, 512, 1, 1))" in message
    assert "encnet-weights list" in message


def test_only_the_known_unused_keys_are_dropped():
    state = meta_state(PC50)
    state["pretrained.fc.weight"] = torch.empty(1000, 2048, device="meta")
    assert len(fit(PC50, state)) == 381
    state["auxlayer.fc.weight"] = torch.empty(2, device="meta")  # not known: refused
    with pytest.raises(WeightsError, match=r"unexpected keys \(auxlayer.fc.weight\)"):
        fit(PC50, state)


def test_a_file_of_another_model_names_the_entry_it_was_checked_against(pc50):
    with pytest.raises(WeightsError) as info:
        load_weights("EncNet_ResNet50s_ADE", file=pc50["pth"], verify=False)
    message = str(info.value)
    assert "does not fit EncNet_ResNet50s_ADE (official encnet, ResNet-50" in message
    assert "unexpected keys (head.connect.0.0.weight" in message
    assert "head.conv6.1.weight (59, 512, 1, 1) (model (150, 512, 1, 1))" in message


def test_checksum_is_verified_and_a_mismatch_names_both(pc50):
    good = with_digest(PC50, pc50["data"])  # SHA-1 of the .pth inside the zip
    assert load_weights(good, file=pc50["zip"]).weights_meta is good
    assert len(W.read_state_dict(pc50["pth"], good, verify=True)) == 383  # with fc.*
    with pytest.raises(WeightsError) as info:
        load_weights(PC50, file=pc50["zip"])  # the published SHA-1: a fabrication fails
    message = str(info.value)
    assert hashlib.sha1(pc50["data"]).hexdigest() in message
    assert W.get_entry(PC50).digest in message
    assert "verify=False" in message and "--no-verify" in message


def test_mmseg_checksum_is_a_sha256_prefix(tmp_path):
    name = "encnet_r50-d8_4xb4-80k_ade20k-512x512"
    assert W.get_entry(name).digest == "44b46b04"  # from the published file name
    small = {"decode_head.conv_seg.bias": torch.arange(150.0)}  # the check comes first
    path, data = write_file(tmp_path / "m.pth", name, small, "mmseg")
    state = W.read_state_dict(path, with_digest(name, data), verify=True)
    assert torch.equal(state["decode_head.conv_seg.bias"], small["decode_head.conv_seg.bias"])
    with pytest.raises(WeightsError, match=r"SHA256 [0-9a-f]{64}, but .* 44b46b04\.\.\."):
        load_weights(name, file=path)


def test_truncated_files_are_refused(tmp_path, pc50):
    for fmt in ("zip", "pth"):
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(pc50[fmt].read_bytes()[: 5_000_000])
        with pytest.raises(WeightsError, match="could not be read as a plain state dict"):
            load_weights(PC50, file=cut, verify=False)
        with pytest.raises(WeightsError, match="incomplete"):
            load_weights(with_digest(PC50, pc50["data"]), file=cut)


class _Planted:
    """Unpickling this object opens (creates) a file: code a weights file must not run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = {"pretrained.conv1.0.weight": torch.zeros(1), "x": _Planted(marker)}
    for fmt in ("pth", "zip"):
        path = tmp_path / f"evil.{fmt}"
        data = pth_bytes(evil, legacy=False)
        if fmt == "zip":
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("encnet_resnet50s_pcontext-4de91d59.pth", data)
        else:
            path.write_bytes(data)
        with pytest.raises(WeightsError, match="nothing in it was run"):
            load_weights(PC50, file=path, verify=False)
        assert not marker.exists()


def test_names_are_case_insensitive_and_unknown_names_listed():
    assert W.get_entry(" encnet_resnet50s_pcontext ") is W.get_entry("ENCNET_RESNET50S_PCONTEXT")
    with pytest.raises(WeightsError, match="EncNet_ResNet101s_ADE.*encnet-weights list"):
        W.get_entry("EncNet_ResNet50_PContext")
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        load_weights(PC50, file="missing.zip")


# ---------------------------------------------------------------------------- catalogue


def test_catalogue_facts():
    official = [e for e in W.CATALOGUE.values() if e.source == "official"]
    assert {e.name for e in official} == {
        "EncNet_ResNet50s_PContext", "EncNet_ResNet101s_PContext", "EncNet_ResNet50s_ADE",
        "EncNet_ResNet101s_ADE", "FCN_ResNet50s_ADE"}
    for e in official:  # {name}-{sha1[:8]}.zip holding the .pth whose SHA-1 is catalogued
        assert e.filename == f"{e.name.lower()}-{e.digest[:8]}.zip" and len(e.digest) == 40
        assert e.stem == "deep64" and e.align_corners and e.crop_size == (
            (576, 576) if e.name == "EncNet_ResNet101s_ADE" else (480, 480))
    pc = W.get_entry(PC50).scores[0]
    assert (pc.pixAcc, pc.mIoU) == pytest.approx((0.792, 0.51)) and "flip" in pc.protocol
    mmseg = [e for e in W.CATALOGUE.values() if e.source == "mmseg"]
    assert len(mmseg) == 12 and {e.dataset for e in mmseg} == {"ade20k", "cityscapes"}
    for e in mmseg:  # the 8 hex digits that end the file name start its SHA-256
        assert e.filename.endswith(f"-{e.digest}.pth") and len(e.digest) == 8
        assert e.url.startswith(W.MMSEG_HOST) and e.stem == "deep32"
        assert e.align_corners == (e.crop_size == (769, 769))
    assert len(W.ADE20K_CLASSES) == len(set(W.ADE20K_CLASSES)) == 150
    assert len(W.CITYSCAPES_CLASSES) == 19
    assert W.IMAGENET_BACKBONES["resnet50s"].filename == "resnet50s-a75c83cf.zip"


# ---------------------------------------------------------------------------- builders


def test_builders_take_published_weights(pc50, tmp_path, monkeypatch):
    good = with_digest(PC50, pc50["data"])
    monkeypatch.setitem(W.CATALOGUE, PC50.lower(), good)
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path))
    (tmp_path / good.filename).write_bytes(pc50["zip"].read_bytes())
    model = encnet_resnet50(weights=PC50, num_classes=59, lateral=True, align_corners=False)
    assert model.weights_meta is good and not model.training and model.align_corners is False
    assert torch.equal(model.head.encode.encoding.codewords,
                       pc50["state"]["head.encmodule.encoding.3.codewords"])
    entry = W.check_builder_args(PC50, "encnet", 50, "deep64", 59, {}, {"aux": True})
    assert entry is good  # what encnet_resnet50s(weights=...) checks before loading


@pytest.mark.parametrize("call,fix", [
    (lambda: encnet_resnet101(weights=PC50), "encnet_resnet50"),
    (lambda: fcn_resnet50(weights=PC50), "encnet_resnet50"),
    (lambda: encnet_resnet50(num_classes=21, weights=PC50), "num_classes=21"),
    (lambda: encnet_resnet50(weights=PC50, lateral=False), "lateral=False"),
    (lambda: encnet_resnet50(weights=PC50, stem="plain"), "stem='plain'"),
    (lambda: encnet_resnet50(weights=PC50, weights_backbone="imagenet"), "weights_backbone"),
    (lambda: encnet_resnet50s(weights="encnet_r50-d8_4xb4-80k_ade20k-512x512"),
     "stem='deep64'"),  # mmsegmentation's is the ResNetV1c stem
])
def test_builder_arguments_that_contradict_the_weights_are_refused(call, fix):
    with pytest.raises(WeightsError, match=fix):
        call()  # refused before any file is looked for


def test_builders_without_weights_still_need_classes():
    with pytest.raises(TypeError, match="num_classes"):
        encnet_resnet50()


# ---------------------------------------------------------------------------- downloads


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's naming)
        cls = type(self)
        cls.requests.append((self.path, self.headers.get("Range")))
        body = cls.files.get(self.path.lstrip("/"))
        if cls.status != 200 or body is None:
            self.send_response(cls.status if cls.status != 200 else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) \
            if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@contextmanager
def serve(files, status=200):
    handler = type("Handler", (_Handler,), {"files": files, "requests": [], "status": status})
    with local_server(handler) as base:
        yield base, handler


def small_entry(tmp_path, payload=b"not really weights" * 1000):
    """The zoo's zip around a small payload, and PC50's entry with that payload's SHA-1."""
    entry = with_digest(PC50, payload)
    archive = tmp_path / "upstream" / entry.filename
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(entry.filename[:-4] + ".pth", payload)
    return entry, archive


def test_download_from_a_local_server_resumes_and_is_cached(tmp_path, monkeypatch):
    entry, archive = small_entry(tmp_path)
    body = archive.read_bytes()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (entry.filename + ".part")).write_bytes(body[:100])  # an interrupted download
    with serve({entry.filename: body}) as (url, handler):
        monkeypatch.setenv(W.ENV_URL, url)
        path = W.download_weights(entry, cache_dir=cache, progress=False)
        assert path == cache / entry.filename and path.read_bytes() == body
        assert handler.requests == [(f"/{entry.filename}", "bytes=100-")]
        assert W.download_weights(entry, cache_dir=cache, progress=False) == path
        assert len(handler.requests) == 1  # the cached copy, verified, no second request


def test_download_through_a_file_url_and_a_bad_download_is_set_aside(tmp_path, monkeypatch):
    entry, archive = small_entry(tmp_path)
    monkeypatch.setenv(W.ENV_URL, archive.parent.as_uri())
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path / "cache"))
    assert W.download_weights(entry, progress=False).read_bytes() == archive.read_bytes()
    wrong = dataclasses.replace(entry, digest="0" * 40)
    (tmp_path / "cache" / entry.filename).unlink()
    with pytest.raises(WeightsError, match="moved to .*zip.bad"):
        W.download_weights(wrong, progress=False)
    assert not (tmp_path / "cache" / entry.filename).exists()


def test_a_refused_download_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    with serve({}, status=403) as (url, _):
        monkeypatch.setenv(W.ENV_URL, url)
        with pytest.raises(WeightsError) as info:
            load_weights(PC50, cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "HTTP 403" in message and "file=PATH" in message and W.ENV_URL in message
    assert W.get_entry(PC50).url in message  # the published address, to fetch by hand


def test_load_weights_downloads_once_then_uses_the_cache(pc50, tmp_path, monkeypatch):
    good = with_digest(PC50, pc50["data"])
    with serve({good.filename: pc50["zip"].read_bytes()}) as (url, handler):
        monkeypatch.setenv(W.ENV_URL, url)
        model = load_weights(good, cache_dir=tmp_path, progress=False)
        assert W.download_weights(good, cache_dir=tmp_path) == tmp_path / good.filename
    assert len(handler.requests) == 1  # the second call found the verified cached copy
    assert torch.equal(model.head.classifier[1].weight, pc50["state"]["head.conv6.1.weight"])


# ---------------------------------------------------------------------------- ImageNet


def test_official_imagenet_backbone_loads_into_the_deep_stem(tmp_path, monkeypatch):
    with torch.device("meta"):
        reference = ResNetBackbone(50, stem="deep64").state_dict()
    state = {k: torch.randn(v.shape) for k, v in reference.items()
             if not k.endswith("num_batches_tracked")}  # as old files: no counters
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    data = pth_bytes(state)
    entry = W.IMAGENET_BACKBONES["resnet50s"]
    archive = tmp_path / entry.filename
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("resnet50s-a75c83cf.pth", data)
    local = ResNetBackbone(50, stem="deep64", weights_path=archive)  # not checksummed
    assert torch.equal(local.conv1[3].weight, state["conv1.3.weight"])
    assert int(local.bn1.num_batches_tracked) == 0
    monkeypatch.setitem(W.IMAGENET_BACKBONES, "resnet50s", dataclasses.replace(
        entry, digest=hashlib.sha1(data).hexdigest()))
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path))  # the cache holds the published zip
    backbone = ResNetBackbone(50, stem="deep64", pretrained=True)
    assert torch.equal(backbone.layer1[0].downsample[0].weight,
                       state["layer1.0.downsample.0.weight"])
    with pytest.raises(WeightsError, match="stem='deep32'"):
        ResNetBackbone(50, stem="deep32", pretrained=True)


def test_deep_stem_preset_builds_the_official_backbone():
    cfg = presets.pcontext_encnet_r50s(weights_backbone="")
    m = cfg.model
    assert (m.backbone, m.lateral, m.align_corners, cfg.optim.lr, cfg.optim.epochs) == (
        "resnet50s", True, True, 1e-3, 80)
    with torch.device("meta"):
        model = engine.build_model(cfg, 59)
    assert model.backbone.stem_type == "deep64" and model.backbone.bn1.num_features == 128
    assert presets.pcontext_encnet_r101s().model.backbone == "resnet101s"


# ---------------------------------------------------------------------------- numerics


@pytest.mark.numerics
def test_forward_through_the_deep_stem_is_the_stem_computed_by_hand():
    torch.manual_seed(0)
    backbone = ResNetBackbone(50, stem="deep64").eval()
    for bn in (backbone.conv1[1], backbone.conv1[4], backbone.bn1):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    caught = []
    backbone.layer1.register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    x = torch.randn(1, 3, 19, 26)
    with torch.no_grad():
        backbone(x)
        s = backbone.conv1

        def bn(t, m):
            return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False,
                                0.0, m.eps)

        h = F.relu(bn(F.conv2d(x, s[0].weight, stride=2, padding=1), s[1]))
        h = F.relu(bn(F.conv2d(h, s[3].weight, padding=1), s[4]))
        h = F.relu(bn(F.conv2d(h, s[6].weight, padding=1), backbone.bn1))
        h = F.max_pool2d(h, 3, stride=2, padding=1)
    assert h.shape == caught[0].shape == (1, 128, 5, 7)
    torch.testing.assert_close(caught[0], h, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- CLI


def test_cli_list_and_download(pc50, tmp_path, capsys, monkeypatch):
    good = with_digest(PC50, pc50["data"])
    cache = tmp_path / "cache"
    assert W.main(["download", PC50, "--file", str(pc50["zip"]), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("encnet-weights: error: ") and "--no-verify" in err
    assert "\n" not in err and not cache.exists()
    monkeypatch.setitem(W.CATALOGUE, PC50.lower(), good)
    assert W.main(["download", PC50.upper(), "--file", str(pc50["pth"]),
                   "--cache", str(cache)]) == 0
    cached = cache / (good.filename[:-4] + ".pth")  # a bare .pth is cached as the .pth
    assert cached.read_bytes() == pc50["pth"].read_bytes()
    assert f"{PC50}: {cached}" in capsys.readouterr().out
    assert W.main(["list", "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(PC50 + " "))
    assert row.split()[1:5] == ["pcontext", "59", "yes", "51.00"]
    assert len([line for line in lines if " no " in line]) == len(W.CATALOGUE) - 1
    monkeypatch.setenv(W.ENV_URL, "http://127.0.0.1:9/nothing-listens-here/")
    assert W.download_weights(PC50, cache_dir=cache) == cached  # found, verified, offline


# ------------------------------------------------------------------ published cost (issue 24)

# mmsegmentation configs/encnet/README.md: "Mem (GB)" and "Inf time (fps)" of the rows that
# publish them (the 80k Cityscapes and 160k ADE20K rows leave both blank).
README_COST = {
    "encnet_r50-d8_4xb2-40k_cityscapes-512x1024": (8.6, 4.58),
    "encnet_r101-d8_4xb2-40k_cityscapes-512x1024": (12.1, 2.66),
    "encnet_r50-d8_4xb2-40k_cityscapes-769x769": (9.8, 1.82),
    "encnet_r101-d8_4xb2-40k_cityscapes-769x769": (13.7, 1.26),
    "encnet_r50-d8_4xb4-80k_ade20k-512x512": (10.1, 22.81),
    "encnet_r101-d8_4xb4-80k_ade20k-512x512": (13.6, 14.87),
}


def test_every_mmseg_entry_has_its_published_cost():
    mmseg = [e for e in W.CATALOGUE.values() if e.source == "mmseg"]
    assert len(mmseg) == 12
    for e in mmseg:
        c = e.cost
        assert c is not None and c.hardware == "V100" and c.gpus == 4, e.name
        assert c.crop_size == e.crop_size and c.infer_ms > 0, e.name
        # the name says GPUs x batch and the schedule: "4xb2-40k", "4xb4-160k"
        tag = f"{c.gpus}xb{c.batch_per_gpu}-{c.iters // 1000}k"
        assert tag in e.name, (tag, e.name)
        assert c.batch == (8 if e.dataset == "cityscapes" else 16)  # metafile "Batch Size"
        if e.name in README_COST:
            mem, fps = README_COST[e.name]
            assert c.train_mem_gb == mem and round(c.fps, 2) == fps, e.name
        else:
            assert c.train_mem_gb is None, e.name
    # the same model (depth, crop) has the same inference time whatever its schedule
    by_model = {(e.depth, e.crop_size): e.cost.infer_ms for e in mmseg}
    assert all(by_model[(e.depth, e.crop_size)] == e.cost.infer_ms for e in mmseg)


def test_cost_table_rows_for_the_chapter():
    header, rows = W.cost_table(["encnet_r50-d8_4xb2-40k_cityscapes-512x1024",
                                 "EncNet_ResNet50s_PContext"])
    assert len(header) == len(rows[0]) == len(rows[1]) == 6
    assert rows[0] == ["encnet_r50-d8_4xb2-40k_cityscapes-512x1024", "512x1024",
                       "40k iterations of 4 x 2 images", "V100", "8.6 GB",
                       "218.34 ms/image (4.58 fps)"]
    # the official zoo publishes its training command only: 4 GPUs, 80 epochs on PContext
    assert rows[1][2:] == ["80 epochs of 4 x 4 images", "-", "-", "-"]
    _, every = W.cost_table()
    assert [r[0] for r in every] == [e.name for e in W.CATALOGUE.values() if e.source == "mmseg"]
    with pytest.raises(WeightsError, match="no published weights"):
        W.cost_table(["EncNet_Nope"])
