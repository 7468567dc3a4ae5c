"""What a group of users (Django's auth groups) may spend and use: a shared monthly budget and a list of models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import Group
from django.db import models as db  # `models` is a field's name below

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class GroupPolicyQuerySet(db.QuerySet["GroupPolicy"]):
    def of(self, user: AbstractBaseUser) -> GroupPolicyQuerySet:
        """The policies of the user's groups, by group name (the order messages name them in)."""
        return self.filter(group__user=user).select_related("group").order_by("group__name", "group_id")


class GroupPolicy(db.Model):
    """A group's monthly budget, shared by its members, and the models they may use.

    Without a row, or with both fields blank, a group restricts nothing."""

    group = db.OneToOneField(Group, on_delete=db.CASCADE, related_name="chat_policy")
    monthly_usd = db.DecimalField(
        "monthly budget",
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="USD per calendar month (UTC) for all members together. Blank: no group budget.",
    )
    # provider:model ids from CHAT_MODELS; the admin offers them as checkboxes. Empty: every offered model.
    models = db.JSONField(
        "models", default=list, blank=True, help_text="The models members may use. None ticked: all of them."
    )
    updated_at = db.DateTimeField(auto_now=True)

    objects = GroupPolicyQuerySet.as_manager()

    class Meta:
        verbose_name = "chat policy"
        verbose_name_plural = "chat policy"

    def __str__(self) -> str:
        return f"Chat policy of {self.group}"

    @property
    def restricts_models(self) -> bool:
        return bool(self.models)
