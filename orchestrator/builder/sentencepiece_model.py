"""What a SentencePiece tokenizer.model says about itself, read from its protobuf (no behaviour is sniffed).

Two facts a Baichuan build depends on: each piece's type (a chat marker must
be a user-defined or control piece, a single symbol, whatever encoding a text
of it gives) and whether the model adds a dummy prefix ("▁" before a text),
which llama.cpp must be told through `add_space_prefix`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import BadInput

SYMBOL_TYPES = ("USER_DEFINED", "CONTROL")  # pieces matched whole, never split or merged


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: tuple[str, ...]
    types: tuple[str, ...]  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
    add_dummy_prefix: bool

    @classmethod
    def read(cls, path: Path) -> "SentencePieceModel":
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        try:
            proto.ParseFromString(Path(path).read_bytes())
        except (OSError, DecodeError) as e:
            raise BadInput(f"{path} is not a SentencePiece model ({type(e).__name__}): copy the model's own tokenizer.model") from None
        names = pb.ModelProto.SentencePiece.Type.Name
        return cls(tuple(p.piece for p in proto.pieces), tuple(names(p.type) for p in proto.pieces),
                   bool(proto.normalizer_spec.add_dummy_prefix))

    def __len__(self) -> int:
        return len(self.pieces)

    def is_symbol(self, token_id: int) -> bool:
        """A user-defined or control piece: one token wherever its text appears."""
        return self.types[token_id] in SYMBOL_TYPES
