"""CI for pipelines: ``mlprov deploy`` (all-or-nothing deployment of DAGs, plugins and services) and
``mlprov pipeline test`` (trigger a DAG through Airflow's REST API and check the run end to end).

The GitLab CI templates in ``gitlab-ci/`` call these commands; ``docs/gitlab-ci.md`` describes both.
Nothing is imported here, so ``mlprov --help`` does not load httpx or Airflow. The public API, by module:

* :mod:`controller.pipeline.deploy`: ``deploy``, ``DeployOptions``, ``DeployResult``, ``collect_files``
* :mod:`controller.pipeline.targets`: ``publisher_for``, ``Publisher`` (local folder, S3, git branch)
* :mod:`controller.pipeline.dagcheck`: ``check_dags`` (the DAG import test), ``DagCheckReport``
* :mod:`controller.pipeline.checks`: ``PipelineTest``, ``PipelineTestOptions``, ``CHECKS``
* :mod:`controller.pipeline.airflow_client` / ``controller_client``: ``AirflowClient``, ``ControllerClient``
* :mod:`controller.pipeline.junit`: ``CheckResult``, ``junit_xml``, ``write_junit``
* :mod:`controller.pipeline.errors`: ``PipelineError`` and its exit codes
* :mod:`controller.pipeline.commands`: the click commands (options only); ``runner``: what they do
"""
