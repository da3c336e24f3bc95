import pytest

from deepcomp import container
from deepcomp.container import Container
from deepcomp.errors import DeepCompError


def sample() -> bytes:
    c = Container(header={"format": "deepcomp", "note": "é"})
    c.add(b"abc")
    c.add(b"")
    c.add(bytes(range(256)) * 3)
    return container.to_bytes(c)


def test_round_trip():
    c = container.from_bytes(sample())
    assert c.header["note"] == "é"
    assert c.records == [b"abc", b"", bytes(range(256)) * 3]


def test_every_truncation_is_rejected():
    data = sample()
    for n in range(len(data)):
        with pytest.raises(DeepCompError):
            container.from_bytes(data[:n])


def test_every_single_bit_flip_is_rejected():
    data = bytearray(sample())
    for i in range(len(data)):
        for bit in (0, 5):
            data[i] ^= 1 << bit
            with pytest.raises(DeepCompError):
                container.from_bytes(bytes(data))
            data[i] ^= 1 << bit


def test_wrong_magic_and_version():
    data = bytearray(sample())
    with pytest.raises(DeepCompError, match="magic"):
        container.from_bytes(b"PK\x03\x04" + bytes(data[4:]))
    data[8] = 9  # version, then fix the file checksum so only the version is wrong
    import struct, zlib

    body = bytes(data[:-4])
    with pytest.raises(DeepCompError, match="version"):
        container.from_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "m.dcmp"
    c = Container(header={"format": "deepcomp"})
    c.add(b"x" * 100)
    assert container.write(path, c) == path.stat().st_size
    assert container.read(path).records == [b"x" * 100]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        container.write(tmp_path / "other.dcmp", c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcmp"]


def test_is_deepcomp_file(tmp_path):
    (tmp_path / "a").write_bytes(sample())
    (tmp_path / "b").write_bytes(b"not")
    assert container.is_deepcomp_file(tmp_path / "a")
    assert not container.is_deepcomp_file(tmp_path / "b")
    assert not container.is_deepcomp_file(tmp_path / "missing")
