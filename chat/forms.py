"""Validation at the edge: what a user may send."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from chat.streaming import catalog


class MessageForm(forms.Form):
    text = forms.CharField(
        strip=True,
        error_messages={"required": "Type a message first."},
        widget=forms.Textarea(
            attrs={"rows": 1, "placeholder": "Send a message", "aria-describedby": "composer-hint", "autofocus": True}
        ),
    )
    model = forms.CharField(required=False)
    # A one-time key rendered into the form: a double submit of the same form finds the first reply.
    request_key = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)

    def __init__(self, *args: Any, access: catalog.ModelAccess | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access = access or catalog.ModelAccess()  # the user's model permissions; none given: no group's
        # For chat.js, which refuses a longer text before sending it. Not maxlength: the browser would
        # cut a long paste short without a word.
        self.fields["text"].widget.attrs["data-max-chars"] = settings.CHAT_MAX_MESSAGE_CHARS

    def clean_text(self) -> str:
        # A form post sends the box's line breaks as CRLF: count (and store) them as the user sees them,
        # as chat.js counts before sending.
        text = self.cleaned_data["text"].replace("\r\n", "\n")
        limit = settings.CHAT_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise forms.ValidationError(
                f"That message is too long: {len(text):,} characters, and the limit is {limit:,}. "
                "Shorten it, then press Send."
            )
        return text

    def clean_model(self) -> str:
        return allowed(self.cleaned_data.get("model", ""), self.access)


def allowed(model: str, access: catalog.ModelAccess) -> str:
    if model and not catalog.is_offered(model):
        raise forms.ValidationError("That model is not available here: choose another one from the list.")
    if model and not access.allows(model):
        raise forms.ValidationError(access.why_not(model))
    return model


class NewConversationForm(MessageForm):
    """The first page's composer: with text it starts the conversation with that question."""

    text = forms.CharField(
        required=False,
        strip=True,
        widget=forms.Textarea(
            attrs={"rows": 1, "placeholder": "Ask anything", "aria-describedby": "composer-hint", "autofocus": True}
        ),
    )


class RenameForm(forms.Form):
    title = forms.CharField(required=False, max_length=200, strip=True)


class SettingsForm(forms.Form):
    """A conversation's model and system prompt; a field left out of the POST is left unchanged."""

    model = forms.CharField(required=False)
    system_prompt = forms.CharField(required=False, strip=True, widget=forms.Textarea(attrs={"rows": 4}))

    def __init__(self, *args: Any, access: catalog.ModelAccess | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access = access or catalog.ModelAccess()

    def clean_model(self) -> str:
        return allowed(self.cleaned_data.get("model", ""), self.access)

    def clean_system_prompt(self) -> str:
        prompt = self.cleaned_data.get("system_prompt", "")
        if len(prompt) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise forms.ValidationError(
                f"The system prompt is limited to {settings.CHAT_MAX_MESSAGE_CHARS:,} characters."
            )
        return prompt

    def changes(self) -> dict[str, str]:
        return {name: value for name, value in self.cleaned_data.items() if name in self.data}
