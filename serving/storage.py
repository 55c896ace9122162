"""Blue/green model storage on S3 (docs/architecture.md, "Serving storage: blue/green on S3").

Layout::

    s3://BUCKET/PREFIX/slots/{blue,green}/manifest.json + artifacts
    s3://BUCKET/PREFIX/ACTIVE   {"slot": ..., "model_version": ..., "manifest_sha256": ...}

Artifacts are plain ``.npy`` arrays (loaded with ``allow_pickle=False``), JSON
and the Annoy ``index.ann`` file: a reader never executes what it loads. The
manifest lists every artifact with its sha256 and size, the index parameters
(so the server queries exactly as the recall was measured) and the measured
ANN recall.

A push (``push_slot``):

1. reads ACTIVE and its ETag; the idle slot is the other one (blue when none);
2. uploads the artifacts to the idle slot, then its ``manifest.json``;
3. re-reads the manifest and every object it lists and checks each sha256;
4. flips ACTIVE in one PUT, conditional on the ETag read in step 1
   (``IfNoneMatch='*'`` when there was no ACTIVE). A concurrent push that
   flipped first makes this PUT fail with 412: exactly one push wins.

ACTIVE is the only object that makes a model live, so a crash anywhere before
step 4 leaves the previous model serving; ACTIVE carries the manifest's sha256,
so a reader also detects an idle slot rewritten after the flip and refuses it.
Known limit: two pushes racing on the *same* idle slot may interleave their
uploads; the flip still lets only one win and readers refuse a slot whose
manifest no longer matches ACTIVE (the previous model keeps serving).

Model version: ``model_card.json["model_version"]`` when the export has one
(set by MLflow registration), else ``sha-<12 hex>``, a content hash of the
arrays, so pushing the same arrays twice gives the same version.

Crash testing: ``LED_PUSH_FAULT`` = ``upload:N`` | ``before_verify`` |
``before_flip`` | ``after_flip`` makes the pushing process ``os._exit(17)`` at
that point (a test hook; unset in production it costs one dict lookup).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

SLOTS = ("blue", "green")
MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
FORMAT = 1
SLOT_ARTIFACTS = ("item_ids.npy", "V.npy", "b.npy", "counts.npy", "model_card.json")
FAULT_ENV = "LED_PUSH_FAULT"


class StorageError(Exception):
    """The store is unreachable or holds something we refuse to use."""


class VerificationError(StorageError):
    """An object's bytes do not match the sha256 its manifest (or ACTIVE) promises."""


class RecallBelowFloor(StorageError):
    """The manifest's measured ANN recall is below the floor it was built against: never pushed."""


class ConcurrentPushError(StorageError):
    """ACTIVE changed since this push read it: another push won the flip."""


@dataclass(frozen=True)
class Active:
    slot: str
    model_version: str
    manifest_sha256: str
    etag: str

    def to_json(self) -> dict:
        return {"slot": self.slot, "model_version": self.model_version, "manifest_sha256": self.manifest_sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def other_slot(slot: str | None) -> str:
    return "green" if slot == "blue" else "blue"


def _is_loopback(url: str | None) -> bool:
    from urllib.parse import urlparse

    return bool(url) and urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def make_client(settings):
    """boto3 S3 client from settings; credentials from boto3's standard chain unless overridden."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"region_name": settings.aws_region}
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key.get_secret_value()
    elif _is_loopback(settings.s3_endpoint_url) and boto3.Session().get_credentials() is None:
        # The local stack's moto server accepts any key: a fresh machine needs no AWS configuration.
        kwargs["aws_access_key_id"] = kwargs["aws_secret_access_key"] = "local-stack"
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return boto3.client("s3", config=config, **kwargs)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _fault(point: str, uploads: int | None = None) -> None:
    """Test hook: die abruptly (no cleanup, no finally) at the named point of a push."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    if wanted == point or (uploads is not None and wanted == f"upload:{uploads}"):
        os._exit(17)


class BlueGreenStore:
    """The blue/green layout under ``s3://bucket/prefix``."""

    def __init__(self, client, bucket: str, prefix: str):
        self.s3, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    @classmethod
    def from_settings(cls, settings) -> "BlueGreenStore":
        return cls(make_client(settings), settings.s3_bucket, settings.s3_prefix)

    # --- keys --------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def slot_key(self, slot: str, name: str) -> str:
        return self.key("slots", slot, name)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # --- bucket / ACTIVE ---------------------------------------------------
    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = self.s3.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.s3.create_bucket(**kwargs)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def read_active(self) -> Active | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key(ACTIVE))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise
        return _parse_active(obj["Body"].read(), obj["ETag"])

    def active_changed(self, etag: str | None) -> Active | None | bool:
        """Cheap poll: ``False`` when ACTIVE still has ``etag`` (HTTP 304), else the current ACTIVE."""
        from botocore.exceptions import ClientError

        if etag is None:
            return self.read_active()
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key(ACTIVE), IfNoneMatch=etag)
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("304", "NotModified"):
                return False
            if code in ("NoSuchKey", "404"):
                return None
            raise
        return _parse_active(obj["Body"].read(), obj["ETag"])

    def flip(self, slot: str, model_version: str, manifest_sha256: str, expected: Active | None) -> Active:
        """Point ACTIVE at ``slot`` in one conditional PUT; ``ConcurrentPushError`` if ACTIVE moved."""
        from botocore.exceptions import ClientError

        body = json.dumps({"slot": slot, "model_version": model_version,
                           "manifest_sha256": manifest_sha256}).encode()
        condition = {"IfMatch": expected.etag} if expected else {"IfNoneMatch": "*"}
        try:
            resp = self.s3.put_object(Bucket=self.bucket, Key=self.key(ACTIVE), Body=body,
                                      ContentType="application/json", **condition)
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                                    "NoSuchKey"):
                raise ConcurrentPushError(
                    f"ACTIVE changed since this push read it ({_error_code(exc)}): another push or rollback won"
                ) from None
            raise
        return Active(slot, model_version, manifest_sha256, resp["ETag"])

    # --- slots -------------------------------------------------------------
    def read_manifest(self, slot: str) -> tuple[dict, str] | None:
        """(manifest, sha256 of its bytes) or None when the slot is empty."""
        found = self._read_manifest_raw(slot)
        return None if found is None else found[:2]

    def _read_manifest_raw(self, slot: str) -> tuple[dict, str, bytes] | None:
        from botocore.exceptions import ClientError

        try:
            raw = self.s3.get_object(Bucket=self.bucket, Key=self.slot_key(slot, MANIFEST))["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return _parse_manifest(raw, slot), hashlib.sha256(raw).hexdigest(), raw

    def write_slot(self, slot: str, files: dict[str, Path], manifest: dict) -> str:
        """Upload artifacts, then the manifest listing their sha256; returns the manifest's sha256."""
        objects = {}
        for count, (name, path) in enumerate(files.items(), start=1):
            objects[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            self.s3.upload_file(str(path), self.bucket, self.slot_key(slot, name))
            _fault("upload", uploads=count)
        raw = json.dumps({**manifest, "slot": slot, "objects": objects}, indent=2, sort_keys=True).encode()
        self.s3.put_object(Bucket=self.bucket, Key=self.slot_key(slot, MANIFEST), Body=raw,
                           ContentType="application/json")
        _fault("upload", uploads=len(files) + 1)
        return hashlib.sha256(raw).hexdigest()

    def download_slot(self, slot: str, dest: Path, expected_manifest_sha256: str | None = None) -> dict:
        """Download and verify every object of ``slot`` into ``dest`` (a temp dir renamed when complete).

        Raises ``VerificationError`` on any mismatch; ``dest`` is then not created. An existing
        ``dest`` is never overwritten (cache directories are named by the manifest's sha256).
        """
        found = self._read_manifest_raw(slot)
        if found is None:
            raise VerificationError(f"slot {slot} is empty (no manifest.json)")
        manifest, manifest_sha, raw = found
        if expected_manifest_sha256 and manifest_sha != expected_manifest_sha256:
            raise VerificationError(
                f"slot {slot}: manifest sha256 {manifest_sha[:12]} != ACTIVE's {expected_manifest_sha256[:12]} "
                "(slot rewritten or partial)")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{slot}-", dir=dest.parent))
        try:
            for name, meta in _listed_objects(manifest, slot).items():
                local = tmp / name
                self._download(slot, name, local)
                actual = sha256_file(local)
                if actual != meta["sha256"]:
                    raise VerificationError(f"slot {slot}: {name} sha256 {actual[:12]} != manifest "
                                            f"{meta['sha256'][:12]}")
            (tmp / MANIFEST).write_bytes(raw)  # the exact bytes: the cached slot can be re-verified offline
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                # Another process (a sibling worker) completed the same verified download first.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {**manifest, "manifest_sha256": manifest_sha}

    def verify_slot(self, slot: str, expected_manifest_sha256: str | None = None) -> dict:
        """Re-read the manifest and every object it lists, checking each sha256 (nothing kept)."""
        scratch = Path(tempfile.mkdtemp(prefix="led-verify-"))
        try:
            return self.download_slot(slot, scratch / slot, expected_manifest_sha256)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _download(self, slot: str, name: str, local: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.download_file(self.bucket, self.slot_key(slot, name), str(local))
        except ClientError as exc:
            raise VerificationError(f"slot {slot}: {name} unreadable ({_error_code(exc) or exc})") from None


def _parse_manifest(raw: bytes, slot: str) -> dict:
    try:
        return json.loads(raw)
    except ValueError:
        raise VerificationError(f"slot {slot}: manifest.json is not JSON") from None


# --- the local cache: what a server restarted during a storage outage can still serve ----------------

LAST_ACTIVE = "LAST_ACTIVE.json"


def remember_active(cache_dir: Path, active: Active) -> None:
    """Record (atomically) which cached slot directory was last verified and swapped in."""
    cache_dir = Path(cache_dir)
    tmp = cache_dir / f".{LAST_ACTIVE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**active.to_json(), "etag": active.etag, "recorded_at": time.time()}))
    os.replace(tmp, cache_dir / LAST_ACTIVE)


def recall_active(cache_dir: Path) -> Active | None:
    """The last ACTIVE this cache served, or None (no record, or an unreadable one)."""
    try:
        data = json.loads((Path(cache_dir) / LAST_ACTIVE).read_text())
        return Active(data["slot"], str(data["model_version"]), str(data["manifest_sha256"]), str(data["etag"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_cached_slot(directory: Path, expected_manifest_sha256: str) -> dict:
    """Re-check a cached slot on disk: the manifest's bytes hash to what ACTIVE named, and every object it
    lists hashes to its manifest entry. ``VerificationError`` otherwise (nothing is trusted from the cache)."""
    directory = Path(directory)
    try:
        raw = (directory / MANIFEST).read_bytes()
    except OSError as exc:
        raise VerificationError(f"cached slot {directory.name}: no manifest ({exc.strerror})") from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_manifest_sha256:
        raise VerificationError(f"cached slot {directory.name}: manifest sha256 {actual[:12]} != recorded "
                                f"{expected_manifest_sha256[:12]}")
    manifest = _parse_manifest(raw, directory.name)
    for name, meta in _listed_objects(manifest, directory.name).items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            raise VerificationError(f"cached slot {directory.name}: {name} missing or sha256 mismatch")
    return manifest


def _parse_active(raw: bytes, etag: str) -> Active:
    try:
        data = json.loads(raw)
        if data["slot"] not in SLOTS:
            raise ValueError(data["slot"])
        return Active(data["slot"], str(data["model_version"]), str(data["manifest_sha256"]), etag)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"ACTIVE is malformed ({exc!r}); fix or delete it") from None


def _listed_objects(manifest: dict, slot: str) -> dict[str, dict]:
    objects = manifest.get("objects")
    if not isinstance(objects, dict) or not objects:
        raise VerificationError(f"slot {slot}: manifest lists no objects")
    for name, meta in objects.items():
        if "/" in name or name.startswith(".") or not isinstance(meta, dict) or "sha256" not in meta:
            raise VerificationError(f"slot {slot}: bad manifest entry {name!r}")
    return objects


# --- operations used by the CLI and the pipeline ------------------------------------------------------

def model_version_of(model_dir: Path, card: dict) -> str:
    """``card["model_version"]`` when present, else ``sha-`` + the model's fingerprint (12 hex)."""
    from models.export import model_fingerprint

    if card.get("model_version") not in (None, ""):
        return str(card["model_version"])
    return f"sha-{model_fingerprint(Path(model_dir))[:12]}"


@dataclass(frozen=True)
class Push:
    """What a blue/green push did: the slot it wrote and flipped ACTIVE to, the version now live and
    what was live before (None on the first push); ``already_live``: nothing written, the version
    was live already (an idempotent rerun)."""

    slot: str
    model_version: str
    store: str
    manifest_sha256: str | None = None
    previous_slot: str | None = None
    previous_model_version: str | None = None
    seconds: float = 0.0
    already_live: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def push_slot(store: BlueGreenStore, files: dict[str, Path], manifest: dict,
              before_verify: Callable[[str], None] | None = None) -> Push:
    """Write the idle slot, verify it, flip ACTIVE. Returns what it did (slot, version, previous).

    Refuses (``RecallBelowFloor``, nothing written) a manifest whose ``ann_recall`` is below the
    ``min_ann_recall`` recorded by the index build, whoever calls it.
    """
    recall, floor = manifest.get("ann_recall"), (manifest.get("ann_report") or {}).get("min_ann_recall")
    if recall is None or floor is None:
        raise RecallBelowFloor("manifest has no measured ann_recall / min_ann_recall: build it with "
                               "serving.publish.build_slot_files")
    if recall < floor:
        raise RecallBelowFloor(f"ANN recall@100 {recall:.4f} < min_ann_recall {floor}: refusing to push")
    store.ensure_bucket()
    previous = store.read_active()
    slot = other_slot(previous.slot if previous else None)
    started = time.time()
    manifest_sha = store.write_slot(slot, files, manifest)
    if before_verify is not None:
        before_verify(slot)
    _fault("before_verify")
    store.verify_slot(slot, manifest_sha)
    _fault("before_flip")
    active = store.flip(slot, manifest["model_version"], manifest_sha, previous)
    _fault("after_flip")
    return Push(slot, str(active.model_version), store.url, manifest_sha,
                previous.slot if previous else None, previous.model_version if previous else None,
                round(time.time() - started, 3))


def rollback(store: BlueGreenStore, expect_slot: str | None = None) -> dict:
    """Point ACTIVE at the other slot if it holds a complete, verified model. ``expect_slot``: refuse
    unless ACTIVE still names that slot (the post-push watch must not undo a later push)."""
    current = store.read_active()
    if current is None:
        raise StorageError(f"nothing to roll back: no ACTIVE in {store.url}")
    if expect_slot is not None and current.slot != expect_slot:
        raise StorageError(f"ACTIVE moved to {current.slot} ({current.model_version}) since the push to "
                           f"{expect_slot}: not rolling back")
    target = other_slot(current.slot)
    try:
        manifest = store.verify_slot(target)
    except VerificationError as exc:
        raise StorageError(f"cannot roll back to {target}: {exc}") from None
    active = store.flip(target, str(manifest["model_version"]), manifest["manifest_sha256"], current)
    return {"slot": active.slot, "model_version": active.model_version,
            "previous_slot": current.slot, "previous_model_version": current.model_version}


def status(store: BlueGreenStore) -> dict:
    """ACTIVE and both slots' versions; ``manifest_matches_active`` flags a slot rewritten after its flip."""
    active = store.read_active()
    slots = {}
    for slot in SLOTS:
        try:
            found = store.read_manifest(slot)
        except VerificationError as exc:
            slots[slot] = {"error": str(exc)}
            continue
        if found is None:
            slots[slot] = None
            continue
        manifest, sha = found
        slots[slot] = {"model_version": manifest.get("model_version"), "created_at": manifest.get("created_at"),
                       "ann_recall": manifest.get("ann_recall"), "manifest_sha256": sha,
                       "items": manifest.get("items"), "dim": manifest.get("index", {}).get("dim")}
        if active and active.slot == slot:
            slots[slot]["manifest_matches_active"] = sha == active.manifest_sha256
    return {"store": store.url, "active_slot": active.slot if active else None,
            "active_model_version": active.model_version if active else None,
            "manifest_sha256": active.manifest_sha256 if active else None, "slots": slots}
