"""The Lightning module that trains a LoRA adapter."""

from __future__ import annotations

import lightning as L
import torch


class LoraModule(L.LightningModule):
    """The peft model, its loss (labels -100 outside the response), AdamW on the adapter."""

    def __init__(self, model, lr: float = 2e-4, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.final_train_loss = float("nan")
        self.best_val_loss = float("inf")
        self.best_state: dict | None = None
        self._train: list[torch.Tensor] = []
        self._val_sum, self._val_tokens = 0.0, 0

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**batch).loss

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def configure_optimizers(self):
        return torch.optim.AdamW([p for _, p in self.trainable()], lr=self.lr,
                                 weight_decay=self.weight_decay)

    def on_train_epoch_start(self) -> None:
        self._train = []

    def training_step(self, batch, batch_idx):
        loss = self(batch)
        self._train.append(loss.detach())
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train:
            mean = torch.stack(self._train).float().mean()
            self.final_train_loss = float(mean)
            self.log("train_loss_epoch", mean)

    def on_validation_epoch_start(self) -> None:
        self._val_sum, self._val_tokens = 0.0, 0

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        n = int((batch["labels"][:, 1:] != -100).sum())  # tokens the (shifted) loss covers
        self._val_sum += float(loss) * n
        self._val_tokens += n

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_tokens:
            return
        val = self._val_sum / self._val_tokens
        self.log("val_loss", val, prog_bar=True)
        if val < self.best_val_loss:
            self.best_val_loss = val
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in self.trainable()}

    def restore_best(self) -> None:
        if self.best_state is None:
            return
        with torch.no_grad():
            for n, p in self.trainable():
                p.copy_(self.best_state[n].to(p.device, p.dtype))


# -- the method ----------------------------------------------------------------------
