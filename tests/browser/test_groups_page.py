"""A group member in a real browser: the model picker offers only the group's models, and the composer warns when
the group's shared budget is nearly spent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group

from chat.models import Conversation, GroupPolicy
from tests.browser.conftest import Tab
from tests.test_limits import spent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_picker_shows_only_the_groups_models_and_the_composer_warns_for_its_budget(
    tab: Tab, user: Any, django_user_model: Any
) -> None:
    interns = Group.objects.create(name="Interns")
    colleague = django_user_model.objects.create_user(username="colleague")
    interns.user_set.add(user, colleague)
    GroupPolicy.objects.create(group=interns, monthly_usd=Decimal(50), models=["openai:gpt-4o-mini", "demo:demo"])
    spent(colleague, "40")
    spent(user, "2.10")  # $42.10 of the group's $50.00: 84 %
    conversation = Conversation.objects.create(user=user, model="anthropic:claude-sonnet-4-5", title="Interns")
    tab.open(f"/chat/{conversation.pk}/")
    page = tab.page
    picker = page.get_by_role("combobox", name="Model")
    options = picker.locator("option").all_inner_texts()
    assert options == ["gpt-4o-mini (openai)", "Demo model (offline, no API key)"]
    # The conversation's model is not the group's: the picker starts on the first allowed one.
    assert picker.input_value() == "openai:gpt-4o-mini"
    warning = page.get_by_role("status").filter(
        has_text="Your group “Interns” has used 84% of its $50.00 monthly budget."
    )
    assert warning.is_visible()
    tab.screenshot("groups-composer-warning")
