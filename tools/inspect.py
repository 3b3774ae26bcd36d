"""Thin wrapper: `python tools/inspect.py --help` (same as `dist-face-inspect`).

Every script in tools/ runs with tools/ first on sys.path, so a plain `import inspect` (done
by dataclasses, numpy, torch...) finds this file instead of the standard library's module.
When imported under that name it therefore replaces itself with the real one.
"""

import sys

if __name__ == "inspect":
    import importlib.util
    import os
    import sysconfig

    _path = os.path.join(sysconfig.get_paths()["stdlib"], "inspect.py")
    _spec = importlib.util.spec_from_file_location("inspect", _path)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["inspect"] = _module  # the import statement returns this entry
    _spec.loader.exec_module(_module)
elif __name__ == "__main__":
    from dist_face.cli.inspect import main

    sys.exit(main())
