-- Row-level rule violations of every entity of one run: the staging part of the
-- exception report. Cross-row rules are added by intermediate models.
with

{% for entity in sms_v1_contract() %}
    {{ entity }}_exceptions as (
        select * from {{ ref('stg_sms__' ~ entity ~ '_exceptions') }}
    ),
{% endfor %}

unioned as (
    {% for entity in sms_v1_contract() %}
        select
            {{ sms_v1_exception_columns() }}
        from {{ entity }}_exceptions
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
)

select
    {{ sms_v1_exception_columns() }}
from unioned
