"""The Wav2Lip generator (Prajwal et al., ACM MM 2020), written from the paper.

Module names reproduce the released checkpoints' state-dict keys exactly (see
``../shared/wav2lip/checkpoint_keys.tsv``), so ``load_state_dict(strict=True)`` accepts them.

Shapes: face (B, 6, 96, 96) in [0, 1] = lower-half-masked face + reference face stacked on
channels; mel (B, 1, 80, 16); output (B, 3, 96, 96) in [0, 1] (BGR, like the training data).
"""

from __future__ import annotations

import torch
from torch import nn


class Conv2d(nn.Module):
    """Conv + BatchNorm + ReLU; the residual variant adds its input before the ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int],
                 padding: int, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU: the decoder's upsampling step."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(c: int) -> Conv2d:
    return Conv2d(c, c, 3, 1, 1, residual=True)


class Wav2Lip(nn.Module):
    """Face encoder (96x96 -> 1x1), audio encoder (80x16 -> 1x1), decoder with skips (1x1 -> 96x96)."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # 96
            nn.Sequential(Conv2d(16, 32, 3, 2, 1), _res(32), _res(32)),  # 48
            nn.Sequential(Conv2d(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),  # 24
            nn.Sequential(Conv2d(64, 128, 3, 2, 1), _res(128), _res(128)),  # 12
            nn.Sequential(Conv2d(128, 256, 3, 2, 1), _res(256), _res(256)),  # 6
            nn.Sequential(Conv2d(256, 512, 3, 2, 1), _res(512)),  # 3
            nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # 1
        ])
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1), _res(32), _res(32),  # 80x16
            Conv2d(32, 64, 3, (3, 1), 1), _res(64), _res(64),  # 27x16
            Conv2d(64, 128, 3, 3, 1), _res(128), _res(128),  # 9x6
            Conv2d(128, 256, 3, (3, 2), 1), _res(256),  # 3x3
            Conv2d(256, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0),  # 1x1
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # 1
            nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), _res(512)),  # 3
            nn.Sequential(Conv2dTranspose(1024, 512, 3, 2, 1, 1), _res(512), _res(512)),  # 6
            nn.Sequential(Conv2dTranspose(768, 384, 3, 2, 1, 1), _res(384), _res(384)),  # 12
            nn.Sequential(Conv2dTranspose(512, 256, 3, 2, 1, 1), _res(256), _res(256)),  # 24
            nn.Sequential(Conv2dTranspose(320, 128, 3, 2, 1, 1), _res(128), _res(128)),  # 48
            nn.Sequential(Conv2dTranspose(160, 64, 3, 2, 1, 1), _res(64), _res(64)),  # 96
        ])
        self.output_block = nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        audio = self.audio_encoder(mel)
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = audio
        # Each decoder step is followed by the encoder feature of the same resolution (U-Net skip).
        for block in self.face_decoder_blocks:
            x = block(x)
            x = torch.cat((x, feats.pop()), dim=1)
        return self.output_block(x)
