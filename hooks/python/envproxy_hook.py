"""Resolve EnvProxy secret references read through os.environ and os.environb.

CPython copies the process environment into os.environ once, at start, so a program reads the
references (`vault:...`, `envproxy:...`) that libenvproxy.so resolves only for C callers of
getenv. install() changes the class of os.environ and os.environb to ResolvingEnviron, a
subclass of os._Environ. The objects stay the same, so modules that imported `environ` before
the hook keep working, and both mappings still share one raw `_data` dict.

A value that starts with a known scheme is read through libc getenv, loaded with ctypes on the
first read of a reference. That call goes through the library, so Python shares its cache and
TTL, and the library records which values it returned, so it can pass references instead of
values to child processes. This module keeps no copy of a value and never logs one.

Behaviour of the mappings once installed:

- Reads (`m[k]`, `get`, `os.getenv`, `os.getenvb`, `items`, `values`, `copy`, `dict(m)`)
  return resolved values. Names that start with ENVPROXY_ are never resolved.
- `in`, iteration, `len` and `repr` use the raw environment, so `repr` shows references.
- Writes (`m[k] = v`, `del`, `pop`, `popitem`, `update`, `clear`, `setdefault`) reach the
  real environment through putenv and unsetenv, as in os._Environ.
- With ENVPROXY_ON_ERROR=unset the library returns NULL for a reference it cannot resolve, and
  reads then treat the name as unset: `m[k]` raises KeyError, `get` returns the default, and
  `keys`, `items`, `values` and `copy` leave the name out. `in`, iteration and `len` still see
  it, because they do not resolve anything.
- With ENVPROXY_LOOKUP_UNSET=1, reading a name absent from the environment asks getenv as well,
  as the library does for C callers.
"""

import os

# collections.abc would import the collections package. os itself is built on this module, so
# it is already loaded at start.
from _collections_abc import ItemsView, KeysView, ValuesView

__all__ = ["ResolvingEnviron", "install", "uninstall"]

_SCHEMES = (b"vault:", b"envproxy:")
_RESERVED_PREFIX = b"ENVPROXY_"

# Marks a name that reads as unset. None cannot serve, because a caller's default may be None.
_UNSET = object()


class _Settings:
    """Resolver and settings shared by every ResolvingEnviron, set by install()."""

    # Callable taking an encoded name and returning the value as bytes, or None for unset.
    resolver = None
    # ENVPROXY_ON_ERROR=unset: the library returns NULL for a reference it cannot resolve.
    unset_on_error = False
    # ENVPROXY_LOOKUP_UNSET=1: names absent from the environment are resolved too.
    lookup_unset = False


_libc_getenv = None


def libc_getenv(name):
    """Call the process's getenv, which is the library's when it is loaded, on encoded name."""
    global _libc_getenv
    if _libc_getenv is None:
        # Imported here because importing ctypes costs more than the whole hook at start.
        import ctypes

        # CDLL(None) searches the global scope, where an LD_PRELOAD library comes before libc.
        function = ctypes.CDLL(None).getenv
        function.argtypes = (ctypes.c_char_p,)
        function.restype = ctypes.c_char_p
        _libc_getenv = function
    return _libc_getenv(name)


def _is_c_name(name):
    """Return whether getenv can receive name without truncating or misreading it."""
    return bool(name) and b"\0" not in name and b"=" not in name


def _resolve_raw(name, raw):
    """Return the bytes a read of encoded name yields, or None when it reads as unset.

    raw is the name's value in the raw environment, or None when the name is absent.
    """
    if name.startswith(_RESERVED_PREFIX):
        return raw
    if raw is None:
        if _Settings.lookup_unset and _is_c_name(name):
            return _Settings.resolver(name)
        return None
    if not raw.startswith(_SCHEMES):
        return raw
    value = _Settings.resolver(name)
    if value is None and not _Settings.unset_on_error:
        # getenv found no such name, so the C environment lost it behind os.environ's back
        # (os.unsetenv). os._Environ reads from its own copy in that case, and so does this.
        return raw
    return value


class ResolvingEnviron(os._Environ):
    """os._Environ that returns resolved values for secret references."""

    def _read(self, key):
        """Return the decoded value of key, or _UNSET when it reads as unset."""
        name = self.encodekey(key)
        value = _resolve_raw(name, self._data.get(name))
        if value is None:
            return _UNSET
        return self.decodevalue(value)

    def __getitem__(self, key):
        value = self._read(key)
        if value is _UNSET:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self.encodekey(key) in self._data

    def keys(self):
        return _ResolvedKeysView(self)

    def items(self):
        return _ResolvedItemsView(self)

    def values(self):
        return _ResolvedValuesView(self)

    def copy(self):
        return dict(self.items())

    def setdefault(self, key, value):
        current = self._read(key)
        if current is not _UNSET:
            return current
        self[key] = value
        return self[key]

    def pop(self, key, *default):
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        value = self._read(key)
        # A name that reads as unset is still removed, so that child processes lose it too.
        if key in self:
            del self[key]
        if value is not _UNSET:
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self):
        # Names that read as unset are skipped and kept, as if they were not there.
        for key in self:
            value = self._read(key)
            if value is _UNSET:
                continue
            del self[key]
            return key, value
        raise KeyError("popitem(): no variable with a readable value is left")

    def clear(self):
        # Removes raw entries directly, so clearing never requests a value from the agent.
        for name in list(self._data):
            try:
                del self[self.decodekey(name)]
            except KeyError:
                pass


class _ResolvedKeysView(KeysView):
    def __iter__(self):
        if not _Settings.unset_on_error:
            yield from self._mapping
            return
        # items() leaves out the names that read as unset.
        for key, _value in self._mapping.items():
            yield key


class _ResolvedItemsView(ItemsView):
    def __iter__(self):
        mapping = self._mapping
        for key in mapping:
            value = mapping._read(key)
            if value is not _UNSET:
                yield key, value


class _ResolvedValuesView(ValuesView):
    def __iter__(self):
        for _, value in self._mapping.items():
            yield value

    def __contains__(self, value):
        return any(item is value or item == value for item in self)


def _environments():
    environments = [os.environ]
    if hasattr(os, "environb"):
        environments.append(os.environb)
    return environments


def install(resolver=None):
    """Make os.environ and os.environb resolve references through resolver.

    resolver takes an encoded name and returns bytes or None. The default is libc_getenv.
    Settings are read from the raw environment now, as the library reads them once at load.
    """
    data = os.environ._data
    _Settings.resolver = resolver if resolver is not None else libc_getenv
    _Settings.unset_on_error = data.get(b"ENVPROXY_ON_ERROR") == b"unset"
    _Settings.lookup_unset = data.get(b"ENVPROXY_LOOKUP_UNSET") == b"1"
    for environment in _environments():
        environment.__class__ = ResolvingEnviron


def uninstall():
    """Give os.environ and os.environb back their plain os._Environ class."""
    for environment in _environments():
        environment.__class__ = os._Environ
    _Settings.resolver = None
