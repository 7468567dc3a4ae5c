"""A GIN index for the sidebar's full-text search of message text, on PostgreSQL only (chat/search.py).

Not a GinIndex in Message.Meta: its USING gin is PostgreSQL's own, and SQLite's migrations would fail on it.
The expression is the one SearchVector("content", config="english") compiles to, so the planner uses it.
"""

from django.db import migrations

INDEX = "chat_message_content_fts"
CREATE = (
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON chat_message "
    "USING gin (to_tsvector('english'::regconfig, COALESCE(content, '')))"
)
DROP = f"DROP INDEX IF EXISTS {INDEX}"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("chat", "0004_message_hidden_at_thinking_ms")]

    operations = [migrations.RunPython(create, drop)]
