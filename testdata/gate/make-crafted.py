"""Crafts SSHSIG vectors ssh-keygen will not make, from TEST keys (adapted from
shared/reference/sshsig-samples/sshsig_craft*.py). Test tooling only: never use on real keys.

  python3 make-crafted.py skkey   # TEST_sk_operator4.pub (synthetic sk-ssh-ed25519 key)
  python3 make-crafted.py blobs   # approval.txt.<name>.sig crafted vectors
"""
import base64, hashlib, os, struct, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

NS = b"destructive-op-v1@agent.example.invalid"
APP = b"ssh:"


def s(b):
    return struct.pack(">I", len(b)) + b


def mpint(i):
    return s(i.to_bytes((i.bit_length() + 8) // 8, "big") if i else b"")


def armor(blob):
    b64 = base64.b64encode(blob).decode()
    body = "\n".join(b64[i:i + 70] for i in range(0, len(b64), 70))
    return "-----BEGIN SSH SIGNATURE-----\n" + body + "\n-----END SSH SIGNATURE-----\n"


def dearmor(text):
    lines = [l.strip() for l in text.strip().splitlines()]
    return base64.b64decode("".join(lines[1:-1]))


def rd(b, o):
    (n,) = struct.unpack(">I", b[o:o + 4])
    return b[o + 4:o + 4 + n], o + 4 + n


def parse(blob):
    o = 10
    f = {}
    for k in ["publickey", "namespace", "reserved", "hash_algorithm", "signature"]:
        f[k], o = rd(blob, o)
    return f


def pubblob(path):
    return base64.b64decode(open(path).read().split()[1])


def signed_data(ns, reserved, hashalg, msg):
    h = {b"sha256": hashlib.sha256, b"sha512": hashlib.sha512, b"sha1": hashlib.sha1}[hashalg](msg).digest()
    return b"SSHSIG" + s(ns) + s(reserved) + s(hashalg) + s(h)


def blob(pk, ns, reserved, hashalg, sigblob, version=1, magic=b"SSHSIG"):
    return magic + struct.pack(">I", version) + s(pk) + s(ns) + s(reserved) + s(hashalg) + s(sigblob)


def load(path):
    return serialization.load_ssh_private_key(open(path, "rb").read(), password=None)


def write(name, data):
    open(name, "w").write(data if isinstance(data, str) else armor(data))


def sk_pub():
    k = load("TEST_sk_seed_ed25519")
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return k, s(b"sk-ssh-ed25519@openssh.com") + s(raw) + s(APP)


def skkey():
    _, pk = sk_pub()
    open("TEST_sk_operator4.pub", "w").write(
        "sk-ssh-ed25519@openssh.com " + base64.b64encode(pk).decode() + " TEST-ONLY-synthetic-sk-operator4\n")


def blobs():
    msg = open("approval.txt", "rb").read()
    sd = signed_data(NS, b"", b"sha512", msg)
    # sk signatures: flags 0x01 (user present), 0x00 (no touch), 0x05 (present + verified).
    k, pk = sk_pub()
    for flags, name in [(0x01, "sk_up"), (0x00, "sk_no_up"), (0x05, "sk_up_uv")]:
        tbs = hashlib.sha256(APP).digest() + bytes([flags]) + struct.pack(">I", 42) + hashlib.sha256(sd).digest()
        sig = s(b"sk-ssh-ed25519@openssh.com") + s(k.sign(tbs)) + bytes([flags]) + struct.pack(">I", 42)
        write(f"approval.txt.{name}.sig", blob(pk, NS, b"", b"sha512", sig))

    ed = load("TEST_operator1_ed25519"); ed_pk = pubblob("TEST_operator1_ed25519.pub")
    rsa_k = load("TEST_operator3_rsa3072"); rsa_pk = pubblob("TEST_operator3_rsa3072.pub")
    ec_k = load("TEST_operator2_ecdsa_p256"); ec_pk = pubblob("TEST_operator2_ecdsa_p256.pub")

    def ed_sig(data):
        return s(b"ssh-ed25519") + s(ed.sign(data))

    good = open("approval.txt.operator1.sig").read()
    f = parse(dearmor(good))
    out = {
        # legacy ssh-rsa (PKCS#1 v1.5 + SHA-1) over correct signed data, and its rsa-sha2-256 control
        "rsa_sha1": blob(rsa_pk, NS, b"", b"sha512", s(b"ssh-rsa") + s(rsa_k.sign(sd, padding.PKCS1v15(), hashes.SHA1()))),
        "rsa_sha256_control": blob(rsa_pk, NS, b"", b"sha512", s(b"rsa-sha2-256") + s(rsa_k.sign(sd, padding.PKCS1v15(), hashes.SHA256()))),
        # reserved edited after signing (OpenSSH: Good) / non-empty reserved covered by the signature
        "reserved_edited": blob(f["publickey"], f["namespace"], b"edited-after-signing", f["hash_algorithm"], f["signature"]),
        "reserved_signed": blob(ed_pk, NS, b"x", b"sha512", ed_sig(signed_data(NS, b"x", b"sha512", msg))),
        "trailing": dearmor(good) + b"\x00\x00\x00\x00",
        "version2": blob(ed_pk, NS, b"", b"sha512", ed_sig(sd), version=2),
        "hash_sha1": blob(ed_pk, NS, b"", b"sha1", ed_sig(signed_data(NS, b"", b"sha1", msg))),
        "ns_swapped": blob(f["publickey"], b"file", f["reserved"], f["hash_algorithm"], f["signature"]),
        "type_confusion": blob(ed_pk, NS, b"", b"sha512", s(b"rsa-sha2-512") + s(ed.sign(sd))),
        "bad_magic": blob(ed_pk, NS, b"", b"sha512", ed_sig(sd), magic=b"SSHSIH"),
        "empty_namespace": blob(ed_pk, b"", b"", b"sha512", ed_sig(signed_data(b"", b"", b"sha512", msg))),
        "crlf": good.replace("\n", "\r\n"),
        "leading_text": "Signed by Alice\n" + good,
    }
    # ECDSA malleability: s -> n - s (same message and key, different signature bytes)
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    r, sv = utils.decode_dss_signature(ec_k.sign(sd, ec.ECDSA(hashes.SHA256())))
    out["ecdsa_orig"] = blob(ec_pk, NS, b"", b"sha512", s(b"ecdsa-sha2-nistp256") + s(mpint(r) + mpint(sv)))
    out["ecdsa_malleated"] = blob(ec_pk, NS, b"", b"sha512", s(b"ecdsa-sha2-nistp256") + s(mpint(r) + mpint(n - sv)))
    # An RSA-16384 public key nobody trusts, with a junk signature: must cost no exponentiation.
    modulus = int.from_bytes(os.urandom(2048), "big") | (1 << 16383) | 1
    big_pk = s(b"ssh-rsa") + mpint(65537) + mpint(modulus)
    out["rsa16384_unknown"] = blob(big_pk, NS, b"", b"sha512", s(b"rsa-sha2-512") + s(os.urandom(2048)))
    for name, data in out.items():
        write(f"approval.txt.{name}.sig", data)


if __name__ == "__main__":
    {"skkey": skkey, "blobs": blobs}[sys.argv[1]]()
