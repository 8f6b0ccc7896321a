"""SecAgg+ secure aggregation: the protocol's primitives and its client and server roles.

Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", and Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead" (SecAgg+: each client masks with k neighbours of a random graph, not all others).

Each client holds two X25519 key pairs: one agrees with a neighbour on the key of their
channel (AES-GCM, for the Shamir shares the server relays), the other on the seed of their
pairwise mask. Secrets are hashed with HKDF-SHA256; the PRG that expands a seed into a mask
is AES-256 in CTR mode (uint32 words). A client's masked input is its quantized update plus
its self mask plus, per neighbour, the pairwise mask added or subtracted by id order, all
modulo 2**32: the pairwise masks cancel in the sum over clients that sent. The server sums
the masked inputs, and with t shares from the survivors rebuilds each survivor's self-mask
seed and each dropped client's mask key, so it learns the sum and nothing else.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2**521 - 1  # a Mersenne prime above every 256-bit secret
SHARE_BYTES = 66  # 521 bits
RAW = serialization.Encoding.Raw


# --- primitives ---------------------------------------------------------------------------------


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)


def prg(seed: bytes, size: int) -> np.ndarray:
    """`size` uint32 words of AES-256-CTR keystream under `seed` (a fresh key per seed, so a
    zero counter block is safe)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * size)), dtype="<u4")


def shamir_split(secret: bytes, holders: list[int], t: int) -> dict[int, int]:
    """Shamir (1979): holder -> share, the value at x = holder + 1 of a random polynomial of
    degree t - 1 over GF(PRIME) whose constant is the secret."""
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = {}
    for h in holders:
        x, y = h + 1, 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        out[h] = y
    return out


def shamir_join(shares: dict[int, int], t: int, size: int = 32) -> bytes:
    """The secret from any t shares (Lagrange interpolation at 0); ValueError with fewer."""
    if len(shares) < t:
        raise ValueError(f"secagg needs {t} shares to unmask, only {len(shares)} came")
    xs = [h + 1 for h in sorted(shares)[:t]]
    total = 0
    for xi in xs:
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num, den = num * -xj % PRIME, den * (xi - xj) % PRIME
        total += shares[xi - 1] * num * pow(den, -1, PRIME)
    return (total % PRIME).to_bytes(size, "big")


def quantize(deltas: np.ndarray, clip: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Deltas (n, P) clipped to [-clip, clip] and rounded stochastically (unbiased) to one of
    2**bits levels, as uint32."""
    levels = 2**bits - 1
    scaled = (np.clip(deltas, -clip, clip) + clip) * (levels / (2 * clip))
    floor = np.floor(scaled)
    up = rng.random(scaled.shape, dtype=np.float32) < (scaled - floor)
    return np.minimum(floor + up, levels).astype(np.uint32)


def dequantize_mean(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """The mean delta from the sum of `count` quantized rows."""
    mean = total.astype(np.float64) / count
    return (mean * (2 * clip / (2**bits - 1)) - clip).astype(np.float32)


def neighbour_graph(ids: list[int], k: int | None, rng: np.random.Generator) -> dict:
    """SecAgg+'s random graph: client -> sorted neighbours, each client with about k of
    them (a random k-regular-ish ring: the ids shuffled, each joined to k // 2 on each
    side); k None or >= n - 1 joins every pair (SecAgg)."""
    n = len(ids)
    if k is None or k >= n - 1:
        return {u: [v for v in ids if v != u] for u in ids}
    order = [ids[i] for i in rng.permutation(n)]
    out: dict[int, set] = {u: set() for u in ids}
    half = max(1, k // 2)
    for i, u in enumerate(order):
        for step in range(1, half + 1):
            v = order[(i + step) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


# --- the client's role --------------------------------------------------------------------------


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


@dataclass
class Client:
    """One client's secrets in one round; only what its methods return leaves it."""

    id: int
    tag: bytes  # binds keys and masks to the round
    channel: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    masking: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    held: dict[int, bytes] = field(default_factory=dict)  # sender -> encrypted shares

    def advertise(self) -> tuple[bytes, bytes]:
        """Round 0: the two public keys."""
        return public_bytes(self.channel), public_bytes(self.masking)

    def channel_key(self, other: int, keys: dict) -> bytes:
        peer = X25519PublicKey.from_public_bytes(keys[other][0])
        return hkdf(self.channel.exchange(peer), b"secagg channel" + self.tag)

    def share_keys(self, neighbours: list[int], keys: dict, t: int) -> dict[int, bytes]:
        """Round 1: per holder (the neighbours and itself), its shares of the self-mask seed
        and of the masking key, encrypted for it."""
        holders = sorted([self.id, *neighbours])
        seed = shamir_split(self.self_seed, holders, t)
        key = shamir_split(private_bytes(self.masking), holders, t)
        out = {}
        for h in holders:
            body = seed[h].to_bytes(SHARE_BYTES, "big") + key[h].to_bytes(SHARE_BYTES, "big")
            nonce = os.urandom(12)
            aad = self.tag + self.id.to_bytes(8, "big") + h.to_bytes(8, "big")
            out[h] = nonce + AESGCM(self.channel_key(h, keys)).encrypt(nonce, body, aad)
        return out

    def masked_input(self, q: np.ndarray, neighbours: list[int], keys: dict) -> np.ndarray:
        """Round 2: q + self mask + sum over neighbours of +-pairwise mask, modulo 2**32."""
        out = q + prg(self.self_seed, q.size)
        for v in neighbours:
            mask = pair_mask(self.masking, keys[v][1], self.tag, q.size)
            out = out + mask if self.id < v else out - mask
        return out

    def unmask(self, survivors: set[int], dropped: set[int], keys: dict) -> dict:
        """Round 3: for each share it holds, the self-mask seed share of a survivor or the
        masking-key share of a dropped client (never both of one client)."""
        out = {}
        for sender, blob in self.held.items():
            aad = self.tag + sender.to_bytes(8, "big") + self.id.to_bytes(8, "big")
            body = AESGCM(self.channel_key(sender, keys)).decrypt(blob[:12], blob[12:], aad)
            if sender in survivors:
                out[sender] = ("seed", int.from_bytes(body[:SHARE_BYTES], "big"))
            elif sender in dropped:
                out[sender] = ("key", int.from_bytes(body[SHARE_BYTES:], "big"))
        return out


def pair_mask(own: X25519PrivateKey, peer_public: bytes, tag: bytes, size: int) -> np.ndarray:
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return prg(hkdf(shared, b"secagg mask" + tag), size)


# --- the server's role --------------------------------------------------------------------------


def unmask_sum(
    masked: dict[int, np.ndarray],
    revealed: dict[int, dict],
    graph: dict[int, list[int]],
    keys: dict,
    t: int,
    tag: bytes,
) -> np.ndarray:
    """The sum of the survivors' quantized inputs (uint32, modulo 2**32) from what the server
    sees: their masked inputs, the public keys and the shares the survivors revealed
    (holder -> sender -> (kind, share))."""
    survivors = sorted(masked)
    total = np.sum(np.stack([masked[u] for u in survivors]), axis=0, dtype=np.uint32)
    size = total.size
    by_sender: dict[int, dict[int, int]] = {}
    for holder, shares in revealed.items():
        for sender, (_, share) in shares.items():
            by_sender.setdefault(sender, {})[holder] = share
    for u in survivors:
        total = total - prg(shamir_join(by_sender.get(u, {}), t), size)
    for d in sorted(set(graph) - set(masked)):
        key = X25519PrivateKey.from_private_bytes(shamir_join(by_sender.get(d, {}), t))
        for v in graph[d]:
            if v in masked:  # v added -mask(d, v) when d < v, +mask when d > v
                mask = pair_mask(key, keys[v][1], tag, size)
                total = total + mask if d < v else total - mask
    return total


# --- one instance of the protocol ---------------------------------------------------------------


@dataclass
class Cohort:
    """One run of the protocol among the clients of a round: the clients (their secrets stay
    in `clients`) and what the server holds and relays (`keys`, `graph`), with the bytes
    each client sent and received beyond a plain round."""

    tag: bytes
    t: int
    graph: dict[int, list[int]]
    clients: dict[int, Client]
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)

    def count(self, client: int, n: int) -> None:
        self.bytes[client] = self.bytes.get(client, 0) + n


def start_cohort(ids: list[int], k: int | None, t: int, tag: bytes, rng) -> Cohort:
    """Rounds 0 and 1: every client advertises its public keys, the server relays them to
    its neighbours; every client sends its encrypted shares, the server relays them."""
    graph = neighbour_graph(ids, k, rng)
    cohort = Cohort(tag, t, graph, {u: Client(u, tag) for u in ids})
    for u, client in cohort.clients.items():
        cohort.keys[u] = client.advertise()
        cohort.count(u, 64 + 64 * len(graph[u]))
    for u, client in cohort.clients.items():
        for holder, blob in client.share_keys(graph[u], cohort.keys, t).items():
            cohort.clients[holder].held[u] = blob
            if holder != u:  # up from u, down to the holder
                cohort.count(u, len(blob))
                cohort.count(holder, len(blob))
    return cohort


def masked_inputs(cohort: Cohort, ids: list[int], q: np.ndarray) -> np.ndarray:
    """Round 2: the masked input of each client of `ids` (rows of q, uint32)."""
    out = np.empty_like(q)
    for row, u in enumerate(ids):
        out[row] = cohort.clients[u].masked_input(q[row], cohort.graph[u], cohort.keys)
        cohort.count(u, out[row].nbytes)
    return out


def finish_cohort(cohort: Cohort, masked: dict[int, np.ndarray]) -> np.ndarray:
    """Round 3: the server names survivors and dropped clients, each survivor reveals its
    shares, and the server unmasks the sum (uint32) of the survivors' inputs."""
    survivors = set(masked)
    dropped = set(cohort.graph) - survivors
    revealed = {}
    for u in sorted(survivors):
        revealed[u] = cohort.clients[u].unmask(survivors, dropped, cohort.keys)
        cohort.count(u, 4 * len(cohort.graph) + (8 + SHARE_BYTES) * len(revealed[u]))
    return unmask_sum(masked, revealed, cohort.graph, cohort.keys, cohort.t, cohort.tag)


def unmaskable(graph: dict[int, list[int]], senders: set[int], t: int) -> bool:
    """Whether every client's secret (a survivor's seed, a dropped client's key) has t
    surviving holders (its neighbours and itself): what the server checks before round 3,
    from public facts only; else the protocol aborts."""
    return all(len(senders & {u, *graph[u]}) >= t for u in graph)
