"""The admin: where conversations and spending are reviewed."""

from django.contrib import admin

from chat.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "content", "stop_reason", "input_tokens", "output_tokens", "cost"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "user", "model", "updated_at"]
    search_fields = ["title"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "conversation",
        "role",
        "model",
        "status",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "cost",
    ]
    list_filter = ["status", "provider", "model", "stop_reason"]
    search_fields = ["content"]
    date_hierarchy = "created_at"
