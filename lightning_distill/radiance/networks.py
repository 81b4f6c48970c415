"""Image-domain CT reconstruction networks split into an ``encoder`` and a ``decoder``.

DGR (GloReDi) needs the latent between the two: its teacher path encodes the dense-view image with
its own encoder and decodes with an EMA copy of the student's decoder. Any network with
``encoder`` and ``decoder`` submodules and ``forward(x) = decoder(encoder(x))`` (plus ``x`` when
its ``global_skip`` attribute is true) works:

* :class:`CTEncoderDecoder` — the toy network (strided convolutions, residual blocks, GroupNorm,
  sigmoid output), a plain-convolution stand-in for GloReDi's Fourier-convolution LaMa generator.
* :class:`VAEEncoderDecoder` — wraps a diffusers ``AutoencoderKL`` (the real-scale class the
  tests build in a tiny random configuration): the latent is the posterior mean.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_distill.utils.checks import check_int

__all__ = ["CTEncoderDecoder", "VAEEncoderDecoder"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
            _norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CTEncoderDecoder(nn.Module):
    """Encoder-decoder for FBP images ``(B, C, H, W) -> (B, C, H, W)``, latent ``(B, latent, H/2^d, W/2^d)``.

    Args:
        in_channels: image channels (1 for CT).
        channels: width of the first stage (doubled at every downsampling).
        num_down: stride-2 downsamplings ``d`` (GloReDi: 2).
        encoder_blocks: residual blocks at the latent resolution in the encoder (GloReDi: 7).
        decoder_blocks: residual blocks at the start of the decoder (GloReDi: 2).
        out_activation: ``"sigmoid"`` (GloReDi's ``add_out_act``) or ``"none"``.
        global_skip: add the input to the output (GloReDi's ``global_skip``, off in its runs): the
            network then learns the correction of the FBP image (its last convolution starts at
            zero, so training starts from the FBP); use with ``out_activation="none"``.

    Raises:
        ValueError: a non-positive size or an unknown activation.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 16,
        num_down: int = 2,
        encoder_blocks: int = 2,
        decoder_blocks: int = 1,
        out_activation: str = "sigmoid",
        global_skip: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, low=1)
        check_int("channels", channels, low=1)
        check_int("num_down", num_down, low=0)
        check_int("encoder_blocks", encoder_blocks, low=0)
        check_int("decoder_blocks", decoder_blocks, low=0)
        if out_activation not in ("sigmoid", "none"):
            raise ValueError(f"`out_activation` must be 'sigmoid' or 'none', got {out_activation!r}.")
        enc: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 7, padding=3, padding_mode="reflect"),
            _norm(channels),
            nn.ReLU(inplace=True),
        ]
        width = channels
        for _ in range(num_down):
            enc += [
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                _norm(2 * width),
                nn.ReLU(inplace=True),
            ]
            width *= 2
        enc += [_ResBlock(width) for _ in range(encoder_blocks)]
        dec: list[nn.Module] = [_ResBlock(width) for _ in range(decoder_blocks)]
        for _ in range(num_down):
            dec += [
                nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        dec.append(nn.Conv2d(width, in_channels, 7, padding=3, padding_mode="reflect"))
        if global_skip:  # start as the identity on the FBP input: the correction begins at zero
            nn.init.zeros_(dec[-1].weight)
            nn.init.zeros_(dec[-1].bias)
        if out_activation == "sigmoid":
            dec.append(nn.Sigmoid())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.latent_channels = channels * 2**num_down
        self.global_skip = global_skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.decoder(self.encoder(x))
        return out + x if self.global_skip else out


class _PosteriorMean(nn.Module):
    """The first half of the channels of ``quant_conv``'s output: the mean of the diagonal Gaussian."""

    def forward(self, moments: Tensor) -> Tensor:
        return moments.chunk(2, dim=1)[0]


class VAEEncoderDecoder(nn.Module):
    """A diffusers ``AutoencoderKL`` as an encoder-decoder reconstruction network (deterministic latent).

    ``encoder`` = VAE encoder -> ``quant_conv`` -> posterior mean; ``decoder`` = ``post_quant_conv``
    -> VAE decoder. Build the VAE with ``in_channels = out_channels = 1`` for CT.

    Args:
        vae: a ``diffusers.AutoencoderKL`` (from ``from_pretrained`` or a config).

    Raises:
        TypeError: ``vae`` lacks the ``encoder``/``decoder`` of an ``AutoencoderKL``.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        if not all(hasattr(vae, name) for name in ("encoder", "decoder")):
            raise TypeError(f"`vae` must be a diffusers AutoencoderKL, got {type(vae).__name__}.")
        quant = getattr(vae, "quant_conv", None) or nn.Identity()
        post = getattr(vae, "post_quant_conv", None) or nn.Identity()
        self.encoder = nn.Sequential(vae.encoder, quant, _PosteriorMean())
        self.decoder = nn.Sequential(post, vae.decoder)
        self.latent_channels = int(vae.config.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
