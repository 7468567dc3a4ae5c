"""URLs of the chat: pages, conversation actions, and a reply's stream and actions."""

from django.urls import path

from chat import pages, views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.new_conversation, name="new"),
    path("demo-login/", views.demo_login, name="demo_login"),
    path("session/", views.session_status, name="session"),
    path("<int:conversation_id>/", views.conversation_page, name="conversation"),
    path("<int:conversation_id>/messages/", views.send_message, name="send"),
    path("<int:conversation_id>/updates/", views.conversation_updates, name="updates"),
    path("<int:conversation_id>/rename/", views.rename_conversation, name="rename"),
    path("<int:conversation_id>/delete/", views.delete_conversation, name="delete"),
    path("<int:conversation_id>/settings/", views.conversation_settings, name="settings"),
    path("messages/<int:message_id>/edit/", views.edit_message, name="edit"),
    path("replies/<int:message_id>/stream/", views.stream_reply, name="stream"),
    path("replies/<int:message_id>/stop/", views.stop_reply, name="stop"),
    path("replies/<int:message_id>/regenerate/", views.regenerate_reply, name="regenerate"),
    path("replies/<int:message_id>/continue/", views.continue_reply, name="continue"),
    path("usage/", pages.usage_page, name="usage"),
    path("search/", pages.search_conversations, name="search"),
    path("<int:conversation_id>/export.md", pages.export_markdown, name="export_markdown"),
    path("<int:conversation_id>/export.json", pages.export_json, name="export_json"),
]
