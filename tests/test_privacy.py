"""medvit.privacy: the pseudonym key is made once, never replaced, and gives stable pseudonyms."""
from __future__ import annotations

import hashlib
import hmac
import stat

import pytest

from medvit import privacy
from medvit.errors import ConfigError


def test_key_file_is_created_once_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv(privacy.KEY_ENV, raising=False)
    key = privacy.load_key()
    path = tmp_path / "medvit" / "id_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert privacy.load_key() == key and len(key) == 64
    assert [p.name for p in path.parent.iterdir()] == ["id_key"]  # no temp file left


def test_a_key_made_by_another_process_is_never_replaced(tmp_path, monkeypatch):
    """Two first runs started together: the second must adopt the first one's key."""
    path = tmp_path / "medvit" / "id_key"
    path.parent.mkdir(parents=True)
    path.write_text("theirs\n")
    privacy._create_key(path)  # lost the race: the file appeared after our is_file() check
    assert path.read_text() == "theirs\n"
    assert [p.name for p in path.parent.iterdir()] == ["id_key"]


def test_pseudonyms_are_keyed_stable_and_raw_only_by_opt_in(monkeypatch):
    monkeypatch.setenv(privacy.KEY_ENV, "secret")
    ids = privacy.patient_ids()
    expected = "p-" + hmac.new(b"secret", b"DOE^JANE", hashlib.sha256).hexdigest()[:16]
    assert ids.pseudonym("DOE^JANE") == (expected, "header_hmac")
    assert privacy.patient_ids().pseudonym("DOE^JANE")[0] == expected
    assert privacy.patient_ids("other").pseudonym("DOE^JANE")[0] != expected
    assert privacy.patient_ids(raw=True).pseudonym("DOE^JANE", "folder") == ("DOE^JANE", "folder")
    with pytest.raises(ConfigError):
        privacy.patient_ids("k", raw=True)
