"""The base class of every error the library raises on purpose: :class:`EncnetError`.

An ``EncnetError`` is about the input (a flag, a file, a dataset, a download, a checkpoint,
a run folder, published weights), and its message names the problem and the fix. The
command lines catch this one class and print it as one line, ``PROG: error: MESSAGE``, with
exit status 2 (:func:`encnet_lite.cli.run`); any other exception is a bug and keeps its
traceback.

Each error type derives from this base (and, where callers may already catch a built-in
type, from that type too). The data errors are defined here because the metrics raise them
as well as the datasets, the file-write error because every module that writes a file raises it
(through :mod:`encnet_lite.files`), and the weights error because both the catalogue
(:mod:`encnet_lite.weights`) and the models that load from it raise it (each module imports
this leaf); the others live with the code that raises them:

============================  ======================================  ==================
error                         module                                  also a
============================  ======================================  ==================
``UsageError``                :mod:`encnet_lite.cli`                  ``ValueError``
``ConfigRangeError``          :mod:`encnet_lite.presets`              ``ValueError``
``DownloadError``             :mod:`encnet_lite.data.download`        ``RuntimeError``
``WeightsError``              :mod:`encnet_lite.errors`               ``RuntimeError``
``FileWriteError``            :mod:`encnet_lite.errors`               ``RuntimeError``
``CheckpointError``           :mod:`encnet_lite.checkpoint`           ``RuntimeError``
``RunFolderError``            :mod:`encnet_lite.runfolder`            ``RuntimeError``
``DeviceError``               :mod:`encnet_lite.engine`               ``ValueError``
============================  ======================================  ==================

(``IncompatibleCheckpointError`` and ``NonFiniteError`` are ``CheckpointError``\\ s.) This
module imports nothing from the library, so any module can import it.
"""


class EncnetError(Exception):
    """Bad input to the library, with a message that says what to do about it."""


class DataError(EncnetError, ValueError):
    """A dataset file is unusable (corrupt, wrong size, labels out of range, hostile), or
    masks hold labels the model's classes do not cover. Also exported by
    :mod:`encnet_lite.data`."""


class DatasetNotFoundError(EncnetError, FileNotFoundError):
    """A dataset root is missing or was only partly prepared."""


class WeightsError(EncnetError, RuntimeError):
    """Weights could not be had or do not fit: offline, a file that is not plain weights, a
    checksum mismatch, or keys that fit no model (ImageNet backbones and published models)."""


class FileWriteError(EncnetError, RuntimeError):
    """A file could not be written (a full disk, a read-only folder, a writer that failed);
    the previous file at that path is intact (:func:`encnet_lite.files.atomic_write`)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: follow-up lines joined with spaces, the type's
    name where it has no message."""
    text = str(exc)
    if isinstance(exc, KeyError) and text:  # str(KeyError('x')) is "'x'": say what it is
        text = f"missing key {text}"
    return " ".join(text.split()) or type(exc).__name__
