"""Resolve EnvProxy secret references read through os.environ and os.environb.

CPython copies the process environment into os.environ once, at start, so a program reads the
references (`vault:...`, `envproxy:...`) that libenvproxy.so resolves only for C callers of
getenv. install() changes the class of os.environ and os.environb to ResolvingEnviron, a
subclass of os._Environ, or to its subclass UnsetOnErrorEnviron. The objects stay the same,
so modules that imported `environ` before the hook keep working, and both mappings still share
one raw `_data` dict.

A value that starts with a known scheme is read through libc getenv, loaded with ctypes on the
first read of a reference. That call goes through the library, so Python shares its cache and
TTL, and the library records which values it returned, so it can pass references instead of
values to child processes. This module keeps no copy of a value and never logs one.

Behaviour of the mappings once installed:

- Reads (`m[k]`, `get`, `os.getenv`, `os.getenvb`, `items`, `values`, `copy`, `dict(m)`)
  return resolved values. Names that start with ENVPROXY_ are never resolved.
- By default, `in`, iteration, `keys`, `len` and `repr` use the raw environment and call no
  resolver. `repr` shows references, never resolved values.
- Writes (`m[k] = v`, `del`, `pop`, `popitem`, `update`, `clear`, `setdefault`) reach the
  real environment through putenv and unsetenv, as in os._Environ.
- With ENVPROXY_ON_ERROR=unset the library returns NULL for a reference it cannot resolve.
  install() then uses UnsetOnErrorEnviron, which treats such a name as absent everywhere:
  `m[k]` raises KeyError, `get` returns the default, and `in`, iteration, `keys`, `len`,
  `items`, `values`, `copy` and `repr` leave the name out. Membership and iteration therefore
  resolve every reference they meet. `repr` still shows references for the names it lists.
  `del m[k]`, `pop` and `clear` still remove such a name from the real environment, so child
  processes do not inherit its reference.
- With ENVPROXY_LOOKUP_UNSET=1, reading a name absent from the environment calls getenv as
  well, as the library does for C callers. `in` and iteration still list only names that are
  in the environment.
"""

import os

# collections.abc would import the collections package. os itself is built on this module, so
# it is already loaded at start.
from _collections_abc import ItemsView, ValuesView

__all__ = ["ResolvingEnviron", "UnsetOnErrorEnviron", "install", "uninstall"]

_SCHEMES = (b"vault:", b"envproxy:", b"k8s:")
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

    def _readable_entries(self):
        """Yield (name, raw, value) as bytes for each name in the environment that reads as set.

        Names are taken from a snapshot, as os._Environ.__iter__ takes them, so the caller may
        change the mapping between steps. A name removed since the snapshot is skipped.
        """
        for name in list(self._data):
            raw = self._data.get(name)
            if raw is None:
                continue
            value = _resolve_raw(name, raw)
            if value is not None:
                yield name, raw, value

    def __getitem__(self, key):
        value = self._read(key)
        if value is _UNSET:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self.encodekey(key) in self._data

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
        if self.encodekey(key) in self._data:
            del self[key]
        if value is not _UNSET:
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self):
        # Names that read as unset are skipped and kept, as if they were not there.
        for name, _raw, value in self._readable_entries():
            key = self.decodekey(name)
            del self[key]
            return key, self.decodevalue(value)
        raise KeyError("popitem(): no variable with a readable value is left")

    def clear(self):
        # Removes raw entries directly, so clearing never requests a value from the agent.
        for name in list(self._data):
            try:
                del self[self.decodekey(name)]
            except KeyError:
                pass


class UnsetOnErrorEnviron(ResolvingEnviron):
    """ResolvingEnviron for ENVPROXY_ON_ERROR=unset, where an unresolvable name is absent.

    A name whose reference resolves to NULL is left out of membership, iteration, `len` and
    `repr` too, so they agree with `m[k]`. They call the resolver for each reference they check.
    """

    def __contains__(self, key):
        name = self.encodekey(key)
        raw = self._data.get(name)
        return raw is not None and _resolve_raw(name, raw) is not None

    def __iter__(self):
        for name, _raw, _value in self._readable_entries():
            yield self.decodekey(name)

    def __len__(self):
        return sum(1 for _entry in self._readable_entries())

    def __repr__(self):
        # Formats the raw value, so a resolved value never reaches a log through repr.
        formatted_items = ", ".join(
            f"{self.decodekey(name)!r}: {self.decodevalue(raw)!r}"
            for name, raw, _value in self._readable_entries()
        )
        return f"environ({{{formatted_items}}})"


class _ResolvedItemsView(ItemsView):
    def __iter__(self):
        mapping = self._mapping
        for name, _raw, value in mapping._readable_entries():
            yield mapping.decodekey(name), mapping.decodevalue(value)


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
    if _Settings.unset_on_error:
        environment_class = UnsetOnErrorEnviron
    else:
        environment_class = ResolvingEnviron
    for environment in _environments():
        environment.__class__ = environment_class


def uninstall():
    """Give os.environ and os.environb back their plain os._Environ class."""
    for environment in _environments():
        environment.__class__ = os._Environ
    _Settings.resolver = None
