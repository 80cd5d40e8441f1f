"""torchbin_writer.py — writes PyTorch-style checkpoint files without PyTorch, for tests.

The layout torch.save uses (PyTorch >= 1.6; src/torchbin.c describes it): a zip archive with
ARCHIVE/data.pkl, a protocol-2 pickle of the state_dict in which each tensor is the call
torch._utils._rebuild_tensor_v2(persistent storage id, offset, size, stride, False,
OrderedDict()), and one stored (uncompressed) member ARCHIVE/data/KEY per storage, aligned to
64 bytes. The pickle is written instruction by instruction here, so tests can also write
pickles that torch never would (forbidden globals, deep nesting, broken records).

The real files written by PyTorch are tests/data/fixtures-bin; this module exists for the
hostile variants (tests/test_corrupt_sweep.py) and the fuzzers' small seeds.
"""
import struct
import zipfile


class Tensor:
    """A view of a storage: `size`/`stride` in elements, `offset` in elements."""

    def __init__(self, key, size, stride=None, offset=0, storage="HalfStorage", numel=None):
        self.key, self.size, self.offset, self.storage = key, tuple(size), offset, storage
        count = 1
        for n in self.size:
            count *= n
        self.numel = offset + count if numel is None else numel
        if stride is None:
            stride, acc = [], 1
            for n in reversed(self.size):
                stride.insert(0, acc)
                acc *= n
        self.stride = tuple(stride)


class Raw:
    """Bytes put into the pickle as they are."""

    def __init__(self, data):
        self.data = data


class Pickle:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def int_(self, v):
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2**31 <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            self.out += b"\x8a\x08" + v.to_bytes(8, "little", signed=True)

    def value(self, x):
        if isinstance(x, Raw):
            self.out += x.data
        elif isinstance(x, bool):
            self.out += b"\x88" if x else b"\x89"
        elif isinstance(x, int):
            self.int_(x)
        elif isinstance(x, str):
            b = x.encode()
            self.out += b"X" + struct.pack("<I", len(b)) + b
        elif isinstance(x, tuple):
            self.out += b"("
            for y in x:
                self.value(y)
            self.out += b"t"
        elif x is None:
            self.out += b"N"
        else:
            raise TypeError(x)

    def global_(self, module, name):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def call(self, module, name, args):
        self.global_(module, name)
        self.value(tuple(args))
        self.out += b"R"

    def tensor(self, t, rebuild=("torch._utils", "_rebuild_tensor_v2")):
        numel = t.numel
        self.global_(*rebuild)
        self.out += b"("
        self.out += b"("
        self.value("storage")
        self.global_("torch", t.storage)
        self.value(t.key)
        self.value("cpu")
        self.value(numel)
        self.out += b"tQ"
        self.value(t.offset)
        self.value(t.size)
        self.value(t.stride)
        self.out += b"\x89"
        self.call("collections", "OrderedDict", ())
        self.out += b"tR"


def state_dict_pickle(entries):
    """entries: list of (name, Tensor or Raw). An OrderedDict, as torch.save writes it."""
    p = Pickle()
    p.call("collections", "OrderedDict", ())
    p.out += b"("
    for name, t in entries:
        p.value(name)
        if isinstance(t, Raw):
            p.out += t.data
        else:
            p.tensor(t)
    p.out += b"u."
    return bytes(p.out)


def write_archive(path, pkl, storages, prefix="archive", compress=False, extra_members=()):
    """storages: {key: bytes}. Members stored and 64-byte aligned like torch.save's."""
    members = [(f"{prefix}/data.pkl", pkl)] + [(f"{prefix}/data/{k}", v) for k, v in storages.items()]
    members += [(f"{prefix}/version", b"3\n"), *extra_members]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED if compress and "/data/" in name else zipfile.ZIP_STORED
            start = z.fp.tell() + 30 + len(name.encode()) + 4  # local header + name + extra's own header
            pad = -start % 64
            zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(zi, data)


def from_safetensors(st_path):
    """(entries, storages) equal to a safetensors file: one storage per tensor."""
    import json
    raw = open(st_path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    kinds = {"F16": ("HalfStorage", 2), "BF16": ("BFloat16Storage", 2), "F32": ("FloatStorage", 4)}
    entries, storages = [], {}
    for i, (name, h) in enumerate((k, v) for k, v in header.items() if k != "__metadata__"):
        storage, esize = kinds[h["dtype"]]
        b, e = h["data_offsets"]
        storages[str(i)] = data[b:e]
        entries.append((name, Tensor(str(i), h["shape"], storage=storage, numel=(e - b) // esize)))
    return entries, storages
