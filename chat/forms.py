"""Validation at the edge: what a user may send."""

from __future__ import annotations

from django import forms
from django.conf import settings

from chat import catalog


class MessageForm(forms.Form):
    text = forms.CharField(
        strip=True,
        error_messages={"required": "Type a message first."},
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Send a message"}),
    )
    model = forms.CharField(required=False)
    # A one-time key rendered into the form: a double submit of the same form finds the first reply.
    request_key = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)

    def clean_text(self) -> str:
        text = self.cleaned_data["text"]
        limit = settings.CHAT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise forms.ValidationError(
                f"That message is too long: {len(text):,} characters, and the limit is {limit:,}."
            )
        return text

    def clean_model(self) -> str:
        model = self.cleaned_data.get("model", "")
        if model and not catalog.is_offered(model):
            raise forms.ValidationError("That model is not available here.")
        return model
