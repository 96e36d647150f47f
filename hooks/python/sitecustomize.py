"""EnvProxy start-up hook for CPython.

libenvproxy.so prepends this directory to PYTHONPATH, so CPython's site module imports this
file at every interpreter start. CPython copies the environment into os.environ before any
Python code runs, so without a hook Python code reads secret references instead of their values.

This file installs envproxy_hook (which reads references through libc getenv, and so through
the library) only when it can matter, and then runs the sitecustomize that this directory hides
from the rest of sys.path. It runs at every start, so it imports nothing that CPython has not
already imported by then: os and sys.

NOTE: where this directory is read-only, as a hostPath mount is, CPython cannot write bytecode
caches for it. Compiling this file and envproxy_hook then costs about 2 ms at each start
(measured with CPython 3.11 on a 2-core x86-64 machine), unless __pycache__ is shipped with them.
"""

import os
import sys

_SCHEMES = (b"vault:", b"envproxy:", b"k8s:")
_RESERVED_PREFIX = b"ENVPROXY_"


def _hook_needed(environ):
    """Return whether any value read through os.environ can differ under the library."""
    no_python = environ.get("ENVPROXY_NO_PYTHON", "").lower() in ("1", "true", "yes")
    disabled = environ.get("ENVPROXY_ENABLED", "").lower() in ("0", "false", "no", "off")
    if disabled or no_python:
        return False
    # Without the library loaded, libc getenv returns the references unchanged.
    if "libenvproxy" not in environ.get("LD_PRELOAD", ""):
        return False
    if environ.get("ENVPROXY_LOOKUP_UNSET") == "1":
        return True
    # _data contains the raw bytes on POSIX, so this loop decodes nothing.
    for name, value in environ._data.items():
        if value.startswith(_SCHEMES) and not name.startswith(_RESERVED_PREFIX):
            return True
    return False


def _report_error(error):
    """Print an error the way CPython's site module reports a failing sitecustomize."""
    if sys.flags.verbose:
        sys.excepthook(type(error), error, error.__traceback__)
    else:
        sys.stderr.write(
            "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
            f"{error.__class__.__name__}: {error}\n"
        )


def _is_this_file(path):
    try:
        return os.path.samefile(path, __file__)
    except OSError:
        # A path inside a zip archive, for one, cannot be passed to stat.
        return False


def _find_next_sitecustomize():
    """Find the sitecustomize that CPython would import if this directory were not on sys.path."""
    # importlib.machinery.PathFinder is this class. It is loaded before site runs, so reaching it
    # through sys.modules costs no import.
    path_finder = sys.modules["_frozen_importlib_external"].PathFinder
    hook_dir = os.path.dirname(__file__)
    spec = path_finder.find_spec(__name__, [entry for entry in sys.path if entry != hook_dir])
    if spec is None or spec.origin is None or not _is_this_file(spec.origin):
        return spec
    # This directory is also on sys.path under another spelling, such as through a symlink.
    # Comparing real paths costs a few syscalls per entry, so it is only the fallback.
    hook_dir = os.path.dirname(os.path.realpath(__file__))
    search_path = [entry for entry in sys.path if os.path.realpath(entry) != hook_dir]
    return path_finder.find_spec(__name__, search_path)


def _run_next_sitecustomize():
    """Execute the hidden sitecustomize as the module `sitecustomize`, as CPython would have."""
    spec = _find_next_sitecustomize()
    if spec is None or spec.loader is None:
        return
    bootstrap = sys.modules["_frozen_importlib"]
    this_module = sys.modules[__name__]
    try:
        module = bootstrap.module_from_spec(spec)
        # The import system returns whatever sys.modules contains under this name once this
        # file finishes, so `import sitecustomize` elsewhere gets the image's module.
        sys.modules[__name__] = module
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules[__name__] = this_module
        # CPython's site module ignores only the ImportError for sitecustomize itself.
        if not (isinstance(error, ImportError) and error.name == __name__):
            _report_error(error)


def _main():
    try:
        if _hook_needed(os.environ):
            import envproxy_hook

            envproxy_hook.install()
    except Exception as error:
        _report_error(error)
    # The hook goes first so that the image's own sitecustomize reads resolved values too.
    _run_next_sitecustomize()


_main()
