from django.db import models


class HueyDashboard(models.Model):
    """No table: the admin lists models, so the dashboard needs one to hang its pages and
    permissions on."""

    class Meta:
        managed = False
        verbose_name = 'dashboard'
        verbose_name_plural = 'dashboard'
