import pytest

from feedback.errors import SignatureError
from feedback.ids import new_id
from feedback.signing import sign_id, verify_id


def test_signed_id_verifies_to_the_raw_id() -> None:
    raw = new_id()
    assert verify_id(sign_id(raw, "k1"), "k1") == raw


def test_known_vector() -> None:
    # HMAC-SHA256("k", "0"*32), first 16 bytes, base64url without padding
    assert sign_id("0" * 32, "k") == "00000000000000000000000000000000.oDpqEyco1_qr-mIFDWWJ5Q"


@pytest.mark.parametrize(
    "forged",
    [
        "0" * 32 + ".AAAAAAAAAAAAAAAAAAAAAA",
        "0" * 32,
        "not-an-id.EawdgR0pWhGuS3eLeQKm7Q",
        "",
    ],
)
def test_forged_ids_are_refused(forged: str) -> None:
    with pytest.raises(SignatureError):
        verify_id(forged, "k")


def test_other_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        verify_id(sign_id("1" * 32, "k1"), "k2")
