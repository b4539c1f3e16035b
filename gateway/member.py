"""Who a gateway speaks for: its member's keys, its registry entry and the policy it enforces.

Sending, receiving and reading mail all sign, open or decide as "this member under the policy
in force"; :class:`Member` answers that once for all of them, from the key files named in the
configuration, the registry view and the policy holder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PrivateKey

from psvn.backbone.registry_view import RegistryView
from psvn.certs.keys import load_hpke_key, load_hybrid_hpke_key, load_retired_keys, load_signing_key
from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.gateway.config import KeysSection
from psvn.gateway.policy import PolicyHolder
from psvn.policies.snapshot import PolicySnapshot
from psvn.protocol import seal


def trust_anchor(path: str, field: str) -> Ed25519PublicKey:
    """An Ed25519 public key named in the configuration; a missing or unusable file is a
    configuration error naming the setting and the file (the gateway must not start trusting
    whatever lies on the backbone)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: cannot read {path}: {exc.strerror or exc}",
                        field=field, rule="key-file") from None
    except ValueError:
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: {path} is not a PEM public key",
                        field=field, rule="key-type") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: {path} is not an Ed25519 public key",
                        field=field, rule="key-type")
    return key


@dataclass(frozen=True)
class Keys:
    """The member's private keys, including those it held before a rotation: it signs with
    whichever key the registry lists, and opens mail sealed to any key it has held."""

    signing: Ed25519PrivateKey
    signing_ring: list[Ed25519PrivateKey]  # the current key first, then the retired ones
    hpke: X25519PrivateKey
    hybrid: MLKEM768X25519PrivateKey | None
    retired_hpke: tuple[seal.PrivateKey, ...]

    @classmethod
    def load(cls, section: KeysSection) -> Keys:
        signing = load_signing_key(Path(section.signing))
        hpke_key = load_hpke_key(Path(section.hpke))
        hybrid = (MLKEM768X25519PrivateKey(*load_hybrid_hpke_key(Path(section.hpke_hybrid)))
                  if section.hpke_hybrid else None)
        retired = load_retired_keys(Path(section.retired_dir) if section.retired_dir else None)
        return cls(signing=signing, signing_ring=[signing, *retired.signing], hpke=hpke_key, hybrid=hybrid,
                   retired_hpke=(*retired.hpke, *(MLKEM768X25519PrivateKey(*pair) for pair in retired.hybrid)))


class Member:
    def __init__(self, org: str, keys: Keys, registry: RegistryView, policy: PolicyHolder, *,
                 data_keys: seal.DataKeys | None = None, opened_keys: seal.OpenedKeys | None = None) -> None:
        self.org = org
        self.keys = keys
        self.registry = registry
        self.policy = policy
        # this gateway's own (not the process's: tests run several gateways in one process)
        self.data_keys = seal.DataKeys() if data_keys is None else data_keys  # (empty ones are falsy)
        self.opened_keys = seal.OpenedKeys() if opened_keys is None else opened_keys
        self._identity: tuple[object, core.Identity] | None = None

    @property
    def identity(self) -> core.Identity:
        """Who this gateway is now: prepared once per registry entry of ours (it changes with a
        key rotation or a change of member type), not once per message."""
        me = self.registry.lookup(self.org, field="gateway.org", require_active=False)
        cached = self._identity
        if cached is not None and cached[0] is me:
            return cached[1]
        keys = self.keys
        signing = (keys.signing if len(keys.signing_ring) == 1
                   else core.choose_signing_key(keys.signing_ring, me.sign_key))
        ident = core.Identity(org=self.org, member_type=me.type, signing_key=signing, hpke_key=keys.hpke,
                              hybrid_key=keys.hybrid, retired_hpke=keys.retired_hpke, data_keys=self.data_keys,
                              opened_keys=self.opened_keys)
        self._identity = (me, ident)
        return ident

    @property
    def snapshot(self) -> PolicySnapshot:
        """The policy set in force; none yet (before the first one arrives) refuses the request."""
        snap = self.policy.snapshot
        if snap is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "no policy set received yet", rule="policy-ready")
        return snap
