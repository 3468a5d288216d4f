//! The control writer: a task that owns the control connection and commits the session's groups in
//! order, each with its checkpoint, so decoding the next group overlaps the insert of this one.

use super::*;

/// A control transaction for the writer: rows, and the checkpoint to store with them. A job without a
/// checkpoint is a part: the writer keeps its transaction open for the following jobs, up to one with a
/// checkpoint, and commits them together.
pub(super) struct WriteJob {
    pub(super) rows: Vec<NewDelivery>,
    pub(super) checkpoint: Option<Lsn>,
}

/// A control transaction the writer committed.
pub(super) struct Written {
    pub(super) rows: usize,
    /// The job's rows, handed back to be dropped on the capture side and their buffer reused for the
    /// next group. A group buffer is megabytes: freeing and allocating one per group made the allocator
    /// sweep its free lists each time. And rows freed by the thread that allocated them go back to its
    /// own caches, where the writer's thread would return them to another thread's arena, one locked
    /// free at a time.
    pub(super) spare: Vec<NewDelivery>,
    pub(super) inserted: u64,
    pub(super) checkpoint: Option<Lsn>,
    pub(super) elapsed: Duration,
}

/// The task that owns the control connection and commits [`WriteJob`]s one by one, in order.
pub(super) struct ControlWriter {
    pub(super) jobs: Option<tokio::sync::mpsc::Sender<WriteJob>>,
    pub(super) acks: tokio::sync::mpsc::UnboundedReceiver<Result<Written, CaptureError>>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Jobs sent and not acknowledged yet.
    pub(super) in_flight: usize,
}

impl ControlWriter {
    /// Starts the task.
    pub(super) fn start(
        client: tokio_postgres::Client,
        schema: String,
        slot: String,
    ) -> ControlWriter {
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<WriteJob>(1);
        let (ack, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // A control transaction left open by parts (jobs without a checkpoint), committed by the
            // next job that has one.
            let mut open: Option<outbox::OpenGroup> = None;
            while let Some(job) = queue.recv().await {
                let started = Instant::now();
                let result = match (open.take(), job.checkpoint) {
                    (None, Some(lsn)) => {
                        outbox::write_group(&client, &schema, &slot, &job.rows, lsn).await
                    }
                    (group, checkpoint) => {
                        async {
                            let mut group = match group {
                                Some(group) => group,
                                None => outbox::OpenGroup::begin(&client).await?,
                            };
                            group.add(&client, &schema, &job.rows).await?;
                            match checkpoint {
                                Some(lsn) => group.commit(&client, &schema, &slot, lsn).await,
                                None => {
                                    open = Some(group);
                                    Ok(0)
                                }
                            }
                        }
                        .await
                    }
                };
                let failed = result.is_err();
                let rows = job.rows.len();
                let spare = job.rows;
                let _ = ack.send(
                    result
                        .map(|inserted| Written {
                            rows,
                            spare,
                            inserted,
                            checkpoint: job.checkpoint,
                            elapsed: started.elapsed(),
                        })
                        .map_err(CaptureError::from),
                );
                if failed {
                    // Nothing after a failed transaction may be committed: the session stops.
                    return;
                }
            }
        });
        ControlWriter {
            jobs: Some(jobs),
            acks,
            task,
            in_flight: 0,
        }
    }

    /// Queues a job. Fails with the writer's error if it has stopped.
    pub(super) async fn send(&mut self, job: WriteJob) -> Result<(), CaptureError> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        };
        if sent {
            self.in_flight += 1;
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// The next acknowledgement; pending while nothing is in flight.
    pub(super) async fn next(&mut self) -> Result<Written, CaptureError> {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        match self.acks.recv().await {
            Some(result) => {
                self.in_flight -= 1;
                result
            }
            None => Err(CaptureError::Db(
                "the control writer stopped unexpectedly".to_string(),
            )),
        }
    }

    /// Why the writer stopped: its error, found among the acknowledgements.
    pub(super) async fn failure(&mut self) -> CaptureError {
        while let Some(result) = self.acks.recv().await {
            if let Err(e) = result {
                return e;
            }
        }
        CaptureError::Db("the control writer stopped unexpectedly".to_string())
    }
}

impl Drop for ControlWriter {
    fn drop(&mut self) {
        // A session that ends with an error leaves queued jobs unwritten: nothing was confirmed for them.
        self.task.abort();
    }
}
