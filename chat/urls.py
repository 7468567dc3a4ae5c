"""URLs of the chat: pages, the send endpoint, and a reply's event stream."""

from django.urls import path

from chat import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.new_conversation, name="new"),
    path("demo-login/", views.demo_login, name="demo_login"),
    path("<int:conversation_id>/", views.conversation_page, name="conversation"),
    path("<int:conversation_id>/messages/", views.send_message, name="send"),
    path("replies/<int:message_id>/stream/", views.stream_reply, name="stream"),
    path("replies/<int:message_id>/stop/", views.stop_reply, name="stop"),
]
