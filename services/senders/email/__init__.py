"""The email sender: SMTP through pooled ``smtplib`` sessions (``common.providers.smtp_email``)."""
