#!/usr/bin/env node
// The create-job-and-poll script of the OpenAI Node SDK's fine-tuning tutorial, unchanged except
// that the file, model and hyperparameters come from the command line. Like the tutorial, the
// client reads OPENAI_BASE_URL and OPENAI_API_KEY from the environment.
//
//   OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-ts-... \
//     node tests/node/create_job.mjs train.jsonl [model] [n_epochs] [batch_size]
//
// The last line printed is JSON: {"id", "status", "fine_tuned_model", "trained_tokens", "events", "answer"}.
import fs from 'fs';
import OpenAI from 'openai';

const [trainingPath, model = 'smollm2-135m-instruct', nEpochs = '1', batchSize = '4'] = process.argv.slice(2);
if (!trainingPath) {
  console.error('usage: node create_job.mjs TRAIN.jsonl [MODEL] [N_EPOCHS] [BATCH_SIZE]');
  process.exit(2);
}

const TERMINAL = ['succeeded', 'failed', 'cancelled'];
const TIMEOUT_MS = Number(process.env.CREATE_JOB_TIMEOUT_MS ?? 300_000);

const client = new OpenAI();

async function main() {
  console.log('Uploading file');
  const file = await client.files.create({ file: fs.createReadStream(trainingPath), purpose: 'fine-tune' });
  console.log(`Uploaded file with ID: ${file.id}`);

  console.log('Starting fine-tuning');
  let fineTune = await client.fineTuning.jobs.create({
    model,
    training_file: file.id,
    hyperparameters: { n_epochs: Number(nEpochs), batch_size: Number(batchSize) },
  });
  console.log(`Fine-tuning job ID: ${fineTune.id}`);

  console.log('Track fine-tuning progress:');
  const events = {};
  const deadline = Date.now() + TIMEOUT_MS;
  while (!TERMINAL.includes(fineTune.status)) {
    if (Date.now() > deadline) throw new Error(`job ${fineTune.id} still ${fineTune.status} after ${TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    fineTune = await client.fineTuning.jobs.retrieve(fineTune.id);
    console.log(`${fineTune.status}`);

    const { data } = await client.fineTuning.jobs.listEvents(fineTune.id, { limit: 100 });
    for (const event of data.reverse()) {
      if (event.id in events) continue;
      events[event.id] = true;
      console.log(`- ${event.created_at}: ${event.message}`);
    }
  }

  // All events, oldest first, through the SDK's auto-pagination.
  const all = [];
  for await (const event of client.fineTuning.jobs.listEvents(fineTune.id, { limit: 20 })) all.push(event);

  // Then, as the tutorial's last step, use the model.
  let answer = null;
  if (fineTune.status === 'succeeded') {
    const completion = await client.chat.completions.create({
      model: fineTune.fine_tuned_model,
      messages: [{ role: 'user', content: 'Planet number 3?' }],
      max_tokens: 8,
    });
    answer = completion.choices[0].message.content;
    console.log(`Answer: ${answer}`);
  }

  console.log(JSON.stringify({
    id: fineTune.id,
    status: fineTune.status,
    fine_tuned_model: fineTune.fine_tuned_model,
    trained_tokens: fineTune.trained_tokens,
    error: fineTune.error ?? null,
    events: all.length,
    answer,
  }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
