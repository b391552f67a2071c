"""Fixtures the test modules share (plain helpers are in tests/helpers.py and
tests/serve_helpers.py; no test module imports another)."""
import pytest

from runtime.cpu import CPU_CLASS_VARIABLE, CPU_CLASSES


@pytest.fixture(params=sorted(CPU_CLASSES))
def cpu_class(request, monkeypatch):
    """Runs the test as each CPU class CI may run on would (AVX2, AVX512-BF16, AMX): what
    ``--precision auto`` picks follows it, in this process and the subprocesses it starts."""
    monkeypatch.setenv(CPU_CLASS_VARIABLE, request.param)
    return request.param


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory):
    """The base path of the shipped model exported once per session (per xdist worker) as version 1."""
    from tests.serve_helpers import export_shipped_model

    return export_shipped_model(tmp_path_factory.getbasetemp() / "export-wavesep")


@pytest.fixture(scope="session")
def shipped_model_server(request, tmp_path_factory):
    """One server of the exported shipped model for the session (several serve test modules
    use it: a server start is seconds), stopped when the session ends."""
    from tests.serve_helpers import Server

    base = tmp_path_factory.getbasetemp() / "export-wavesep"
    base.mkdir(exist_ok=True)
    # Started before the export: it starts up meanwhile, and picks version 1 up when it appears.
    server = Server(base, "wavesep", tmp_path_factory.getbasetemp() / "wavesep-server.log")
    try:
        request.getfixturevalue("shipped_export")
        server.wait_for({1})
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def exported(config, tmp_path_factory):
    """(run dir, version dir) of a tiny random Wave-U-Net of the module's ``config`` fixture,
    exported with small windows (so songs span several) and with its ONNX file."""
    from runtime import export
    from tests.helpers import make_run_dir

    run_dir = make_run_dir(tmp_path_factory.mktemp("run") / "tiny", config)
    version_dir = export.export_run(run_dir, tmp_path_factory.mktemp("export") / "tiny", onnx=True,
                                    chunk_seconds=0.1, log=lambda message: None)
    return run_dir, version_dir
